"""`robot-rl dataset verify` and `dataset repair`: read every chunk of a store; copy its intact
episodes into a new store. Repair never writes to the damaged store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tqdm import tqdm

from robot_rl.datasets.store import EpisodeStore, remove_dead_leftovers
from robot_rl.errors import DatasetError

_STORE_ATTRS = ("format", "schema", "stats_accumulators", "created")


def verify_store(path, progress: bool = True) -> tuple[list[str], bool]:
    """(one line per damage found: metadata that cannot be read or does not agree with itself, a
    missing or corrupt chunk with the episodes it holds; whether the chunks carry checksums).
    No lines: the store is whole, as far as its checksums (or, without them, decoding) can tell."""
    try:
        store = EpisodeStore.open(path, check_chunks=False)
    except DatasetError as exc:
        if not Path(path).exists():
            raise
        return [str(exc)], False
    with store:
        return [
            f"{d['key']} steps {d['first']}-{d['last']}: {d['problem']} "
            f"(episodes {', '.join(map(str, d['episodes'])) or 'none'})"
            for d in store.verify(progress)
        ], store.checksums


def repair_store(src, out, progress: bool = True) -> dict:
    """Copy every episode of `src` that no damaged chunk touches into a new store at `out`."""
    src, out = Path(src), Path(out)
    if out.exists() or out.resolve() == src.resolve():
        raise DatasetError(f"{out} already exists; repair writes a new store and never changes {src}")
    try:
        store = EpisodeStore.open(src, check_chunks=False)
    except DatasetError as exc:
        raise DatasetError(f"cannot repair: {exc}") from None
    with store:
        damaged = sorted({e for d in store.verify(progress) for e in d["episodes"]})
        keep = [e for e in range(store.n_episodes) if e not in set(damaged)]
        attrs = {k: v for k, v in store.attrs.items() if k not in _STORE_ATTRS}
        attrs.update(repaired_from=str(src), dropped_episodes=damaged)
        # Built beside `out` and renamed at the end: a killed repair leaves no store that looks finished.
        remove_dead_leftovers(out)
        building = out.with_name(f".{out.name}.repairing-{os.getpid()}")
        try:
            with EpisodeStore.create(
                building, store.schema, fps=store.fps, attrs=attrs, overwrite=True
            ) as copy:
                for e in tqdm(keep, desc="repair", unit="episode", disable=not progress):
                    copy.append_episode(store.episode(e))
                for key in store.keys:  # a relabeled key's provenance
                    copy.array(key).attrs.update(store.key_attrs(key))
            os.rename(building, out)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return {"store": str(out), "kept": len(keep), "episodes": store.n_episodes, "dropped": damaged}
