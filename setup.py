"""Installs kerasbn (training, evaluation, export) and data_tools (dataset building)."""

from setuptools import find_packages, setup

LITERT = ["ai-edge-litert>=2.0"]
ONNX = ["tf2onnx>=1.17", "onnxruntime>=1.20"]
POSTGRES = ["psycopg[binary]>=3.2"]

setup(
    name="kerasbn",
    version="0.1.0",
    description="The Batch Normalization face-recognition study, rebuilt on TensorFlow/Keras",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["kerasbn", "kerasbn.*", "data_tools", "data_tools.*"])
    + ["kerasbn.launch_files"],
    # The flagfiles stay at launch/ in the repository (the README's paths) and install as
    # kerasbn.launch_files, where python -m kerasbn.launch finds the experiment sets.
    package_dir={"kerasbn.launch_files": "launch"},
    package_data={"kerasbn.launch_files": ["*.flags", "*/*.flags", "sets/*/*.flags",
                                           "tune/*.yaml"]},
    python_requires=">=3.11",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "tensorboard>=2.20",
        "pillow>=10",
        "absl-py>=2.1",
        "numpy>=1.26",
        "matplotlib>=3.8",
        # The ROC the field reads IJB's TARs from (insightface's eval_ijbc.py uses it).
        "scikit-learn>=1.5",
        # Face detection (kerasbn.faces.detector): MIT-licensed code and weights, the
        # weights inside the wheel; the version tested.
        "mtcnn==1.0.0",
        # The search behind `python -m kerasbn.tune` (TPE, pruners, RDB storage, plots); its
        # PyYAML reads the search spaces. The version tested.
        "optuna==5.1.0",
        "PyYAML>=6",
    ],
    # The converters' runtimes for `python -m kerasbn.export --format=litert|onnx`; the tests
    # run both formats, so the test extra carries them.
    extras_require={
        "and-cuda": ["tensorflow[and-cuda]>=2.21,<2.22"],
        "litert": LITERT,
        "onnx": ONNX,
        # A PostgreSQL study shared by several tune processes (SQLAlchemy's default driver),
        # and optuna-dashboard to watch one.
        "postgres": POSTGRES,
        "dashboard": ["optuna-dashboard>=0.21"],
        # scikit-image and OpenCV are the references the alignment is tested against
        # (and scikit-image's astronaut the public-domain photo it is tested on).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "scikit-image>=0.26",
                 "opencv-python-headless>=4.8,<5", *LITERT,
                 *ONNX, *POSTGRES],
        # PyTorch's CPU build: the reference the field's semantics (arcface_torch's BN,
        # margins, schedule and step) are tested against, and the peer bench. The tests
        # that need it skip without it, so ./test.sh stays light; CI installs it.
        "torch": ["torch==2.13.0"],
    },
)
