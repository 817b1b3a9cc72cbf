"""Start the tlab-gradio web app: python app.py

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address (default 127.0.0.1:7860);
TLAB_HOME the workspace (default ./workspace).
"""
from tlab_gradio.ui import main

if __name__ == "__main__":
    main()
