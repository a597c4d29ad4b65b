"""ScaleDigits generation time per image: this checkout against an earlier commit.

Loads `keras_msattn/data/scale_digits.py` as it was at `--against` (from git)
beside the current one, warms both (every training digit's glyph is cached, as
in a long training run), checks that both give byte-identical images, labels,
size maps and digit records, then times `generate("train", i)` in interleaved
rounds, the order alternating, and prints the medians and the median ratio of
the rounds.

    python benchmarks/scale_digits_speed.py --against 38334d4
    python benchmarks/scale_digits_speed.py --against 38334d4 --rounds 8 --images 100
"""

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package of this checkout, not an installed one


def module_at(commit, folder):
    source = subprocess.run(
        ["git", "show", f"{commit}:keras_msattn/data/scale_digits.py"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if source.returncode:
        sys.exit(f"--against {commit}: {source.stderr.strip()}")
    path = Path(folder) / "scale_digits_at_commit.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("scale_digits_at_commit", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same_output(a, b, images):
    for index in range(images):
        first, second = a.generate("train", index), b.generate("train", index)
        for x, y in zip(first[:3], second[:3], strict=True):
            if x.tobytes() != y.tobytes():
                return False
        if first[3] != second[3]:
            return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--images", type=int, default=100, help="images per round and version")
    args = parser.parse_args(argv)
    from keras_msattn.data import scale_digits as current

    with tempfile.TemporaryDirectory() as folder:
        earlier = module_at(args.against, folder)
        versions = {args.against: earlier, "this checkout": current}
        for module in versions.values():
            for sample in module.split_sample_indices("train"):
                module._glyph_topology(int(sample))
        identical = same_output(earlier, current, 50)
        print(f"byte-identical on the first 50 training images: {identical}")
        times = {name: [] for name in versions}
        start = 50
        for round_index in range(args.rounds):
            order = list(versions.items())
            for name, module in order if round_index % 2 == 0 else order[::-1]:
                begin = time.perf_counter()
                for index in range(start, start + args.images):
                    module.generate("train", index)
                times[name].append(1000 * (time.perf_counter() - begin) / args.images)
            start += args.images
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} ms per image "
              f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip
    ratios = [
        new / old for new, old in zip(times["this checkout"], times[args.against], strict=True)
    ]
    print(f"this checkout / {args.against}: median of the rounds {statistics.median(ratios):.2f}x")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
