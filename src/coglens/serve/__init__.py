"""``coglens serve``: one HTTP server speaking the OpenAI, TGI, vLLM and Triton protocols (``pip install
'coglens[serve]'``). In Python::

    import uvicorn
    from coglens.serve import ServeSettings, create_app

    uvicorn.run(create_app(ServeSettings(model="tiny:cogvlm2", api_key="secret")), port=8000)
"""

from .app import create_app
from .limits import ServeLimits
from .settings import ServeSettings

__all__ = ["ServeLimits", "ServeSettings", "create_app"]
