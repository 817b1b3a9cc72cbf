"""tlab-gradio: fine-tune language models on every GPU of a machine from a web page.

The core (manifests, params, gpus, launcher, jobs, logs, data, models, service,
trainers) never imports gradio; only tlab_gradio.ui does.
"""
__version__ = "0.1.0"
