"""`notellm serve`: the HTTP API and the creator's web page on uvicorn."""

from __future__ import annotations

from typing import Optional

import typer

from notellm.cli.common import console

app = typer.Typer()


@app.command("serve")
def serve(
    model: str = typer.Option(..., "--model", "-m",
                              help="model folder that embeds new notes (the one that built the index), "
                                   "or zero-shot:<backbone>"),
    index: str = typer.Option(..., "--index", "-i", help="index folder (notellm index build)"),
    notes: Optional[str] = typer.Option(None, help="Note table: titles of similar notes, categories for tags"),
    popularity_model: Optional[str] = typer.Option(None, "--popularity-model",
                                                   help="folder written by `notellm popularity train`"),
    tagger: str = typer.Option("none", help="hashtag/category suggestions: none | model (the served NoteLLM "
                                            "generates) | knn (tags of the nearest --notes)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, help="port"),
    max_k: int = typer.Option(100, help="most neighbours a request may ask for"),
    max_notes: int = typer.Option(32, help="most notes per /embed request"),
    max_body_kb: int = typer.Option(1024, help="largest request body in KiB (bigger: 413)"),
    batch_wait_ms: float = typer.Option(5.0, help="how long a model request waits to share a forward pass"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve the API (`/docs`) and the web page (`/`) for creators and engineers."""
    import uvicorn

    from notellm.serving.app import create_app_from_paths
    from notellm.serving.schemas import ServingLimits

    limits = ServingLimits(max_k=max_k, max_notes=max_notes, max_body_bytes=max_body_kb * 1024,
                           model_wait_ms=batch_wait_ms)
    web = create_app_from_paths(model=model, index=index, notes=notes, popularity_model=popularity_model,
                                tagger=tagger, limits=limits)
    console.print(f"[green]serving[/] http://{host}:{port}/  (API docs: /docs)")
    uvicorn.run(web, host=host, port=port, log_level=log_level, workers=1)
