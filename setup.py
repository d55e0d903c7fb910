"""mxq_jax: a JAX/Flax NNX implementation of MXQ-VAE (joint image-text generation)."""

import setuptools

AOT = ["jax[tpu]>=0.10.0"]
NOTEBOOKS = ["matplotlib>=3.7"]

setuptools.setup(
    name="mxq_jax",
    version="0.1.0",
    description="MXQ-VAE in JAX/Flax NNX: unconditional image-caption pair generation.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["mxq_jax", "mxq_jax.*"]),
    # The trained models `python -m mxq_jax.sample --pretrained=NAME` samples from.
    package_data={"mxq_jax": ["pretrained_models/*/*"]},
    python_requires=">=3.11",
    install_requires=[
        # jax 0.10.x is the newest for Python 3.11; Python 3.12+ gets 0.11+.
        "jax>=0.10.0",
        "flax>=0.12.0",
        "optax>=0.2.6",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-datasets>=4.9.8",
        # tf.data input pipeline and clu's TensorBoard writer; the CPU build is enough
        # (JAX owns the accelerator).
        "tensorflow-cpu>=2.18",
        "tensorboard>=2.18",
        "sentencepiece>=0.2.0",
        "ml-collections>=1.0.0",
        "clu>=0.0.12",
        "pillow>=10.0",
        "numpy>=1.26",
        "absl-py>=2.0",
        # mxq_jax/files.py: the project's own files, local or gs://.
        "etils[epath]>=1.7",
    ],
    extras_require={
        # The ahead-of-time fit check (python -m mxq_jax.aot) compiles for TPU slices with
        # libtpu, on any host; jax[tpu] picks the libtpu of the installed jax.
        "aot": AOT,
        # Orbax lists gs:// checkpoint directories with the Cloud Storage client.
        "gcs": ["google-cloud-storage>=2.0"],
        # tests/test_remote_paths.py runs gs:// paths against fsspec's in-memory filesystem.
        # notebooks/ (matplotlib's plots; Colab has it) and the tests that execute them.
        "notebooks": NOTEBOOKS,
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "fsspec>=2023.1", *AOT, *NOTEBOOKS,
                 "papermill>=2.5", "ipykernel>=6.0"],
    },
)
