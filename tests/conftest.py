import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# The files whose tests take longest (1-4 minutes each on 2 cores, most of it
# training), longest first: each xdist worker runs whole files (`--dist loadfile`),
# and started last they would leave one worker running them alone. xdist would
# hand out the files with few tests last; `--no-loadscope-reorder` (pyproject.toml)
# keeps this order.
LONG_FILES_FIRST = (
    "test_distributed_training.py",
    "test_training.py",
    "test_segmenter.py",
    "test_paper_tables.py",
    "test_resume.py",
    "test_quickstart.py",
    "test_export_qat.py",
    "test_faults.py",
    "test_batch_norm.py",
    "test_export_tflite.py",
    "test_export_saved_model.py",
    "test_evaluation.py",
    "test_backbones.py",
    "test_export_cli.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONG_FILES_FIRST.index(name) if name in LONG_FILES_FIRST else len(LONG_FILES_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
