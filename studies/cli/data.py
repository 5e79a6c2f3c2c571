"""``msatune data ...``: make, check and import datasets in the msa-tf2 HDF5 layout.

Only numpy/h5py are imported here (through ``augment.dataset``): no TensorFlow, so these commands
answer instantly.
"""

from __future__ import annotations

from pathlib import Path

import click

from msatune.studies.cli.context import AppContext, console, echo_json, pass_app

LAYOUT = """\b
The msa-tf2 layout: one directory, HDF5 files each holding one dataset 'd1':
  text_{split}_emb.h5 (N,T,300)  audio_{split}.h5 (N,T,74)  video_{split}.h5 (N,T,47)
  y_{split}.h5 (N,1) labels in [-3,3]     for split in train, valid, test
  optional: oracle_{split}.h5 (N,) noise-free target, id_{split}.h5 (N,) sample ids"""


@click.group(
    "data",
    help=f"""Make, check and import datasets (the msa-tf2 HDF5 layout).

\b
Examples:
  msatune data synth data/mosi-synth --preset mosi --seed 1
  msatune data info data/mosi-synth
  msatune data import-mmsa aligned_50.pkl data/mosi-mmsa --allow-pickle

{LAYOUT}
""",
)
def data() -> None:
    pass


@data.command(
    "synth",
    help="""Write a synthetic MOSI-like dataset to OUT (a new or empty directory).

The data is a fair stand-in for CMU-MOSI: labels on a 1/3 grid in [-3, 3] (averaged ratings of
three annotators, heavy-tailed noise), sentiment carried by text, audio and video with decreasing
strength at a few time steps only, and a sarcasm flag in the audio that flips the text's
sentiment. It also writes the noise-free target per split (oracle_{split}.h5), so 'data info'
shows the floor MAE: the error of that target itself, which a model can only approach.
The same seed gives the same data (same fingerprint).

\b
Presets:
  mosi   1284/229/686 samples, T=20, dims text 300, audio 74, video 47 (CMU-MOSI's shapes)
  mosei  16326/1871/4659 samples, T=20, dims 300/74/713 (CMU-MOSEI's, MMSA's split; ~2 GB)
  tiny   48/24/24 samples, T=8, dims 16/8/6 (for quick tests)
  video  900/200/600 samples, T=32, dims 64/32/96 (video carries the sentiment)

\b
Presets of other structure (MOSI's sizes; to check that a result holds beyond one generator):
  lexicon   T=20, dims 300/74/47: sentiment in 1-3 polar words with negation, scaled by
            the audio's arousal; labels lean positive; NaN video and -inf audio values
  conflict  T=30, dims 300/5/20: sentiment builds up over every step; for 20% the text
            contradicts voice and face (the label follows them); 15% have no video;
            labels pile up at 0 and lean negative, five annotators

\b
Example:
  msatune data synth data/mosi-synth --preset mosi --seed 1
  msatune data synth /tmp/mosei-small --preset mosei --scale 0.01
""",
)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["mosi", "mosei", "tiny", "video", "lexicon", "conflict"]), default="mosi", show_default=True,
              help="Sizes of the dataset.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed: same seed, same data.")
@click.option("--scale", type=float, default=1.0, show_default=True, metavar="F",
              help="Multiply every split size by F (0 < F <= 1, at least 8 samples per split): "
              "a small dataset of the preset's shapes, e.g. --preset mosei --scale 0.01.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty OUT: its dataset files (msa-tf2 names) are replaced, every other file is kept.")
@click.option("--json", "as_json", is_flag=True, help="Print the 'data info --json' payload.")
@pass_app
def synth_cmd(app: AppContext, out: Path, preset: str, seed: int, scale: float, overwrite: bool,
              as_json: bool) -> None:
    from msatune.augment.summary import summary
    from msatune.augment.synth import synthesize

    ds = synthesize(out, preset=preset, seed=seed, overwrite=overwrite, scale=scale)
    if as_json:
        echo_json(summary(ds))
        return
    sizes = "/".join(str(s.n) for s in ds.splits.values())
    click.echo(
        f"wrote {ds.path} (preset {preset}{'' if scale == 1.0 else f' x{scale:g}'}, seed {seed}): "
        f"{sizes} samples, T={ds.seq_len}, "
        f"dims {ds.dims['text']}/{ds.dims['audio']}/{ds.dims['video']}, "
        f"fingerprint {ds.fingerprint[:12]}"
    )
    click.echo(f"next: msatune data info {out}")


@data.command(
    "info",
    help=f"""Check the dataset in DIR and summarize it.

Validates every file (shapes, N per split, T and dims across splits, labels finite and in
[-3, 3]), then shows per split: N, T, dims, how many non-finite feature values were read as 0,
label statistics, the MAE of the best constant predictor (the median) and, when oracle files
exist, the floor MAE (noise-free target vs labels). The fingerprint identifies the content.
Last, the memory one trial needs on this dataset, and this machine's memory. A split larger
than half the machine's memory (or $MSATUNE_STREAM_ABOVE_BYTES) is streamed from its HDF5 files.

\b
Examples:
  msatune data info data/mosi-synth
  msatune data info data/mosi-synth --json | jq .splits.valid.constant_mae

{LAYOUT}
""",
)
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
@click.option("--clip-labels", is_flag=True,
              help="Clip labels outside [-3, 3] instead of rejecting the dataset.")
@pass_app
def info_cmd(app: AppContext, directory: Path, as_json: bool, clip_labels: bool) -> None:
    from msatune.augment.dataset import load_dataset
    from msatune.augment.footprint import split_bytes, trial_memory
    from msatune.augment.summary import summary

    ds = load_dataset(directory, clip_labels=clip_labels)
    payload = summary(ds)
    memory = trial_memory(split_bytes(ds.splits))
    if as_json:
        echo_json({**payload, "memory": memory.as_json()})
        return
    _render_info(payload)
    console().print(f"memory: {memory.describe()}")


def _render_info(payload: dict) -> None:
    from rich import box
    from rich.table import Table

    first = next(iter(payload["splits"].values()))
    d = first["dims"]
    table = Table(
        title=f"{payload['path']}  T={first['seq_len']}  dims text/audio/video "
        f"{d['text']}/{d['audio']}/{d['video']}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for col in ("split", "N", "NaN->0", "mean", "std", "min", "max", "const MAE", "floor MAE"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, s in payload["splits"].items():
        table.add_row(
            name, str(s["n"]), str(s["nan_count"]), f"{s['label_mean']:+.3f}",
            f"{s['label_std']:.3f}", f"{s['label_min']:+.2f}", f"{s['label_max']:+.2f}",
            f"{s['constant_mae']:.4f}", "-" if s["floor_mae"] is None else f"{s['floor_mae']:.4f}",
        )
    con = console()
    con.print(table)
    con.print(f"fingerprint {payload['fingerprint']}")
    con.print("const MAE: median predictor; floor MAE: noise-free target (oracle) vs labels")


@data.command(
    "import-mmsa",
    help="""Import MMSA's aligned_50.pkl into OUT in the msa-tf2 layout.

MMSA (thuiar/MMSA) ships a pickle of {train, valid, test} -> {text, audio, vision,
regression_labels, id, ...}. The import writes text/audio/video/y files per split and keeps the
sample ids (id_{split}.h5). Non-finite feature values (MMSA's audio holds -inf) are written as 0
and counted, as MMSA's own loader does. Unaligned pickles (different T per modality) are refused: msa-tf2
needs aligned sequences, so use aligned_50.pkl.

Loading a pickle runs any code stored in it: the import refuses unless you pass --allow-pickle,
which you should do only for a file from a source you trust.

\b
Example:
  msatune data import-mmsa ~/MMSA/MOSI/Processed/aligned_50.pkl data/mosi-mmsa --allow-pickle
""",
)
@click.argument("pkl", metavar="PKL", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--allow-pickle", is_flag=True,
              help="Allow unpickling PKL (pickle runs code: trusted files only).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty OUT: its dataset files (msa-tf2 names) are replaced, every other file is kept.")
@click.option("--clip-labels", is_flag=True,
              help="Clip labels outside [-3, 3] instead of refusing the import.")
@pass_app
def import_mmsa_cmd(app: AppContext, pkl: Path, out: Path, allow_pickle: bool, overwrite: bool,
                    clip_labels: bool) -> None:
    from msatune.augment.mmsa import import_mmsa

    ds = import_mmsa(pkl, out, allow_pickle=allow_pickle, overwrite=overwrite,
                     clip_labels=clip_labels)
    sizes = "/".join(str(s.n) for s in ds.splits.values())
    replaced = {name: s.nan_count for name, s in ds.splits.items() if s.nan_count}
    if replaced:
        per_split = ", ".join(f"{n} in {name}" for name, n in replaced.items())
        click.echo(f"replaced {sum(replaced.values())} non-finite feature values (NaN, -inf) by 0: "
                   f"{per_split}; the written files hold finite values only")
    click.echo(
        f"wrote {ds.path}: {sizes} samples, T={ds.seq_len}, "
        f"dims {ds.dims['text']}/{ds.dims['audio']}/{ds.dims['video']}, "
        f"fingerprint {ds.fingerprint[:12]}"
    )
    click.echo(f"next: msatune data info {out}")
