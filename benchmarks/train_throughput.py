"""Training throughput (images/s) of the recipes' models: one `model.fit` step at a time.

Models (the recipes' settings, random weights, synthetic data):
    vgg16_single     recipes/voc2012_vgg16_largefov.py --variant single_scale
    vgg16_full       recipes/voc2012_vgg16_largefov.py --variant full (2 scales, attention)
    resnet34_base    recipes/ade20k_resnet34_d8.py --variant baseline
    resnet34_full    recipes/ade20k_resnet34_d8.py --variant full (2 scales, attention)

Each model is built and compiled as `msattn train` does (deep-supervision losses,
metrics, SGD with the poly schedule, synchronized batch norm), then trained on
one repeated synthetic batch (random pixels and labels, so the input pipeline
costs nothing). The first `--warmup` steps (tracing included) are not timed;
the median over the next `--steps` steps is reported, as images/s = batch /
median step time.

    nice python benchmarks/train_throughput.py --crop-size 321 --batch-size 2
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MODELS = {
    "vgg16_single": ("voc2012_vgg16_largefov.py", "single_scale"),
    "vgg16_full": ("voc2012_vgg16_largefov.py", "full"),
    "resnet34_base": ("ade20k_resnet34_d8.py", "baseline"),
    "resnet34_full": ("ade20k_resnet34_d8.py", "full"),
}


def measure(name, crop_size, batch_size, warmup, steps):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_msattn import training
    from keras_msattn.config import load_recipe, recipe_config, resolve_config
    from keras_msattn.segmenter import output_names

    recipe, variant = MODELS[name]
    config = recipe_config(
        load_recipe(str(RECIPES / recipe)),
        variant,
        {"model": {"backbone_weights": None}, "crop_size": crop_size, "batch_size": batch_size},
    )
    config = resolve_config(config)
    keras.utils.set_random_seed(0)
    model = training.build_model(config)
    training.synchronize_batchnorm(model)
    training.compile_model(model, config)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, crop_size, crop_size, 3)).astype("float32")
    labels = rng.integers(0, config.num_classes, (batch_size, crop_size, crop_size)).astype("int32")
    targets = {key: labels for key in output_names(config.scales)}
    data = tf.data.Dataset.from_tensors((images, targets)).repeat()

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step to finish
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    model.fit(
        data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[timer], shuffle=False
    )
    timed = timer.times[warmup:]
    median = statistics.median(timed)
    return {
        "model": name,
        "recipe": f"recipes/{recipe} --variant {variant}",
        "parameters": model.count_params(),
        "first_step_s": round(timer.times[0], 2),
        "median_step_s": round(median, 3),
        "images_per_s": round(batch_size / median, 3),
        "timed_steps": len(timed),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--crop-size", type=int, default=321)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (tracing included)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    import tensorflow as tf

    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    print(
        f"training throughput, crop {args.crop_size}, batch {args.batch_size}, {device}, "
        f"median of {args.steps} steps after {args.warmup} warm-up steps"
    )
    print("| model | recipe | parameters | first step (s) | median step (s) | images/s |")
    print("|---|---|---|---|---|---|")
    results = []
    for name in args.models:
        result = measure(name, args.crop_size, args.batch_size, args.warmup, args.steps)
        results.append(result)
        print(
            f"| {name} | `{result['recipe']}` | {result['parameters']:,} | "
            f"{result['first_step_s']} | {result['median_step_s']} | {result['images_per_s']} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
