"""Section 3 study: loss sampling against full-image training, and four ways to a dense output.

Part 1 trains the same FCN-32s three times on the synthetic set, keeping every
pixel's loss (p = 1) or each final-layer cell's loss with probability p = 0.5 or
0.25 (patchwise training as loss sampling), and records mean IU against epochs
and against wall-clock time. Part 2 scores, on held-out images, the p = 1 FCN-32s
as trained, the same weights made denser by shift-and-stitch (16 passes) and by
rarefying pool4 and pool5 (one pass), both at output stride 8, the FCN head on
the rarefied backbone (``dilated_fcn``), and an FCN-8s with skips trained like
the FCN-32s: mean IU and time per image. Tables go into benchmarks/RESULTS.md
between the section-3 markers, curves into benchmarks/section3_sampling.png.

    python benchmarks/section3_study.py            # about 10 minutes on 2 CPU cores
    python benchmarks/section3_study.py --quick    # a smoke run of about a minute
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from fcnseg import confusion_matrix, preprocess, scores
from fcnseg.data.synthetic import SyntheticSegmentation
from fcnseg.models.dense import coarse_part, dilated_fcn, rarefy, shift_and_stitch, to_pixels
from fcnseg.models.geometry import path_map
from fcnseg.train.trainer import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
KEEP_PROBS = (1.0, 0.5, 0.25)
# The demo's recipe for a narrow VGG16 from scratch (see fcnseg.cli.demo), on smaller images.
TRAIN = {
    "widths": (8, 16, 32, 32, 32, 64),
    "weight_init": "kaiming",
    "preprocess": "imagenet",
    "loss": "mean",
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "poly",
    "batch_size": 2,
    "class_balance": True,  # median-frequency weights: from scratch, plain loss sits on "all background" for long
    "loss_sampling_cell": 32,  # a final-layer cell of FCN-32s, as in the paper
    "seed": 0,
}
FULL = {"epochs": 6, "train_images": 120, "val_images": 16, "test_images": 16, "image_size": (96, 128)}
QUICK = {"epochs": 1, "train_images": 8, "val_images": 4, "test_images": 2, "image_size": (40, 48)}


class InMemory(torch.utils.data.Dataset):
    """Synthetic pairs drawn once, so that epochs do not pay for generating them."""

    def __init__(self, count: int, seed: int, size: tuple[int, int]):
        source = SyntheticSegmentation(count, seed=seed, size_range=size)
        self.class_names, self.num_classes = source.class_names, source.num_classes
        self.pairs = [source[i] for i in range(count)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        return self.pairs[index]


def train(arch: str, keep_prob: float, data: dict, sets: tuple, out: Path):
    config = TrainConfig(
        arch=arch,
        loss_keep_prob=keep_prob,
        epochs=data["epochs"],
        val_every=max(1, len(sets[0]) // TRAIN["batch_size"] // 2),  # twice per epoch
        out=str(out / f"{arch}-p{keep_prob}"),
        progress=False,
        **TRAIN,
    )
    start = time.perf_counter()
    result = Trainer(config, train_set=sets[0], val_set=sets[1]).fit()
    print(
        f"{arch} p={keep_prob}: mean IU {result.history[-1]['mean_iu']:.3f} in {time.perf_counter() - start:.0f} s"
    )
    return result


def sampling_tables(runs: dict[float, list[dict[str, float]]]) -> str:
    lines = [
        "| keep prob. p | final mean IU | best mean IU | training time (s) | s / epoch |",
        "|---|---|---|---|---|",
    ]
    for p, rows in runs.items():
        epochs = rows[-1]["epoch"]
        best = max(r["mean_iu"] for r in rows)
        lines.append(
            f"| {p:g} | {rows[-1]['mean_iu']:.3f} | {best:.3f} | {rows[-1]['seconds']:.0f} "
            f"| {rows[-1]['seconds'] / epochs:.1f} |"
        )
    lines += [
        "",
        "Mean IU on the validation images against epochs (seconds since the start in brackets):",
        "",
    ]
    lines.append("| epoch | " + " | ".join(f"p = {p:g}" for p in runs) + " |")
    lines.append("|---" * (len(runs) + 1) + "|")
    for i, row in enumerate(next(iter(runs.values()))):
        cells = [f"{rows[i]['mean_iu']:.3f} ({rows[i]['seconds']:.0f} s)" for rows in runs.values()]
        lines.append(f"| {row['epoch']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(runs: dict[float, list[dict[str, float]]]) -> str:
    """What the sampling runs show, said plainly when no run learned more than the background."""
    flat = all(len({round(r["mean_iu"], 4) for r in rows}) == 1 for rows in runs.values())
    if not flat:
        return "Compare the curves at equal epochs and at equal seconds: the paper found no speed-up."
    return (
        "Reading: no run left its first value (predicting one class everywhere), so at this budget the "
        "comparison of p is inconclusive: FCN-32s trained from scratch needs far more steps than 20 "
        "minutes of CPU allow. The seconds differ through the shared machine's load, not through p: "
        "every step runs the same forward and backward pass over the whole image whatever p is."
    )


def dense_methods(fcn32s, fcn8s):
    """name -> (output stride, forward passes, function image -> (K, H, W) scores)."""
    rarefied = rarefy(rarefy(coarse_part(fcn32s), "pool5"), "pool4")
    dilated = dilated_fcn(fcn32s, 8)
    position = path_map(rarefied)  # where a stride-8 score sits: 8 i + 12.5

    def stitched(x):
        return to_pixels(shift_and_stitch(fcn32s, x, 4), position, x.shape[-2:])

    def rarefied_scores(x):
        return to_pixels(rarefied(x), position, x.shape[-2:])

    return {
        "FCN-32s (learned 32x upsampling)": (32, 1, fcn32s),
        "FCN-32s + shift-and-stitch x4": (8, 16, stitched),
        "FCN-32s rarefied (pool4, pool5)": (8, 1, rarefied_scores),
        "FCN-32s rarefied + FCN head (dilated_fcn)": (8, 1, dilated),
        "FCN-8s (skips, trained)": (8, 1, fcn8s),
    }


def dense_table(methods, test_set, num_classes: int) -> str:
    lines = [
        "| method | output stride | passes | mean IU | pixel acc. | ms / image |",
        "|---|---|---|---|---|---|",
    ]
    images = [preprocess(image, TRAIN["preprocess"])[None] for image, _ in test_set]
    for name, (stride, passes, method) in methods.items():
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        seconds = 0.0
        with torch.no_grad():
            for x, (_, label) in zip(images, test_set, strict=True):
                start = time.perf_counter()
                pred = method(x).argmax(1)[0]
                seconds += time.perf_counter() - start
                confusion += confusion_matrix(pred, torch.as_tensor(label), num_classes)
        metrics = scores(confusion)
        lines.append(
            f"| {name} | {stride} | {passes} | {metrics['mean_iu']:.3f} | {metrics['pixel_acc']:.3f} "
            f"| {1000 * seconds / len(images):.0f} |"
        )
    return "\n".join(lines)


def plot(runs: dict[float, list[dict[str, float]]], path: Path) -> None:
    """Two panels: mean IU against epochs and against seconds, one line per keep probability."""
    font = ImageFont.load_default(size=13)
    width, height, margin = 440, 300, (56, 34, 14, 42)
    image = Image.new("RGB", (2 * width, height), "white")
    draw = ImageDraw.Draw(image)
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44)]
    for panel, key in enumerate(("epoch", "seconds")):
        left, top = panel * width + margin[0], margin[1]
        right, bottom = (panel + 1) * width - margin[2], height - margin[3]
        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text(
            ((left + right) / 2, 10), f"validation mean IU by {key}", fill="black", font=font, anchor="mt"
        )
        x_high = max(r[key] for rows in runs.values() for r in rows)
        y_high = max(0.1, max(r["mean_iu"] for rows in runs.values() for r in rows) * 1.1)

        def xy(x, y, left=left, right=right, top=top, bottom=bottom, x_high=x_high, y_high=y_high):
            return left + x / x_high * (right - left), bottom - y / y_high * (bottom - top)

        for i in range(5):
            value = y_high * i / 4
            draw.text((left - 5, xy(0, value)[1]), f"{value:.2f}", fill="black", font=font, anchor="rm")
            value = x_high * i / 4
            draw.text((xy(value, 0)[0], bottom + 5), f"{value:.3g}", fill="black", font=font, anchor="mt")
        draw.text(((left + right) / 2, bottom + 22), key, fill="black", font=font, anchor="mt")
        for colour, (p, rows) in zip(colours, runs.items(), strict=False):
            draw.line([xy(r[key], r["mean_iu"]) for r in rows], fill=colour, width=2)
            draw.text((left + 8, top + 6 + 16 * colours.index(colour)), f"p = {p:g}", fill=colour, font=font)
    image.save(path)


def write_results(markdown: str, path: Path) -> None:
    """Replace the section-3 part of RESULTS.md, leaving the other sections as they are."""
    begin, end = "<!-- section3 -->", "<!-- /section3 -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing to RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small convolutions: one thread beats two on a shared 2-core machine
    data = QUICK if args.quick else FULL
    started = time.perf_counter()
    size = data["image_size"]
    sets = (
        InMemory(data["train_images"], 0, size),
        InMemory(data["val_images"], 1, size),
        InMemory(data["test_images"], 2, size),
    )
    out = Path(tempfile.mkdtemp(prefix="section3-"))
    try:
        results = {p: train("fcn32s", p, data, sets, out) for p in KEEP_PROBS}
        fcn8s = train("fcn8s", 1.0, data, sets, out).model
        runs = {p: result.history for p, result in results.items()}
        dense = dense_table(dense_methods(results[1.0].model, fcn8s), sets[2], sets[0].num_classes)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    total = time.perf_counter() - started
    settings = (
        f"Settings: synthetic set, {data['train_images']} training images, {data['val_images']} validation "
        f"and {data['test_images']} test images of {size[0]}-{size[1]} pixels a side; VGG16 widths "
        f"{TRAIN['widths']}, He initialisation, Adam lr {TRAIN['lr']:g} with poly decay, mean loss with median-frequency class weights, batch "
        f"{TRAIN['batch_size']}, {data['epochs']} epochs, seed {TRAIN['seed']}; loss sampling keeps each "
        f"{TRAIN['loss_sampling_cell']}x{TRAIN['loss_sampling_cell']} final-layer cell with probability p. "
        f"One CPU thread (torch.set_num_threads(1)) on a shared 2-core machine; times include validation. "
        f"Whole study: {total / 60:.1f} minutes (`python benchmarks/section3_study.py`)."
    )
    markdown = "\n\n".join(
        [
            "## Section 3: loss sampling, shift-and-stitch and rarefaction",
            settings,
            "### Patchwise training is loss sampling: does sampling speed convergence?",
            sampling_tables(runs),
            reading(runs),
            "![mean IU against epochs and seconds](section3_sampling.png)",
            "### Dense output from FCN-32s: shift-and-stitch, rarefaction, skips",
            "Shift-and-stitch and rarefaction give the same scores away from the borders "
            "(tests/test_dense.py); what differs is the cost: 16 passes against one.",
            dense,
        ]
    )
    print(markdown)
    if not args.quick:
        plot(runs, HERE / "section3_sampling.png")
        write_results(markdown, HERE / "RESULTS.md")


if __name__ == "__main__":
    main()
