"""``coglens serve``: one HTTP server speaking the OpenAI, TGI, vLLM and Triton protocols (``pip install
'coglens[serve]'``). In Python::

    import uvicorn
    from coglens.serve import ServeSettings, create_app

    uvicorn.run(create_app(ServeSettings(model="tiny:cogvlm2", api_key="secret")), port=8000)
"""

from coglens._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".app": ["create_app"], ".limits": ["ServeLimits"], ".settings": ["ServeSettings"],
})
