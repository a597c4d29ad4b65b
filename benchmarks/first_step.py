"""What the first training step of the quickstart's model costs: graph ops and seconds.

Builds and compiles `keras_msattn.quickstart.quickstart_config`'s model as
`msattn train` does, counts the ops of its traced `train_step` (those of the
optimizer's update apart), then times `model.fit` on one repeated batch: the
first step (tracing and TensorFlow's graph optimization included) and the mean
of the next `--steps`. Run it from the root of any checkout or export of the
package to compare versions back to back:

    python benchmarks/first_step.py
    (cd /tmp/old && python /path/to/benchmarks/first_step.py)
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.getcwd())  # the package of the current folder, not an installed one


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras
    import tensorflow as tf

    from keras_msattn import training
    from keras_msattn.quickstart import quickstart_config

    config = training.resolve_config(quickstart_config(steps=args.steps + 1))
    keras.utils.set_random_seed(0)
    model = training.build_model(config)
    training.compile_model(model, config)
    batch = next(iter(training.train_dataset(config, seed=1)))

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            seconds.append(time.perf_counter() - self.started)

    seconds = []
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(data, epochs=1, steps_per_epoch=args.steps + 1, verbose=0, callbacks=[StepClock()])
    # The same step traced once more, only to count its ops (after the timing).
    graph = tf.function(model.train_step).get_concrete_function(batch).graph
    operations = graph.get_operations()
    optimizer_ops = [op for op in operations if op.name.startswith(model.optimizer.name)]
    print(
        f"{os.getcwd()}: {len(operations)} ops in the traced train_step "
        f"({len(optimizer_ops)} of them the optimizer's, {len(model.trainable_variables)} "
        f"trained variables); first step {seconds[0]:.1f} s, then "
        f"{1000 * sum(seconds[1:]) / max(1, len(seconds) - 1):.0f} ms per step"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
