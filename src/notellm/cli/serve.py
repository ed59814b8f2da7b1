"""`notellm serve`: the HTTP API and the creator's web page on uvicorn; `notellm compact-writes`: fold the
write log into the index folder or the Milvus collection."""

from __future__ import annotations

from typing import Optional

import typer

from notellm.cli.common import console

app = typer.Typer()


def check_exposure(host: str, write_log: Optional[str], api_key: Optional[str]) -> None:
    """Writes on a network address need a token: refuse to start otherwise."""
    from notellm.errors import ConfigError
    from notellm.serving.security import is_loopback

    if write_log and not api_key and not is_loopback(host):
        raise ConfigError(f"refusing to serve writes on {host} without a token: pass --api-key (or set "
                          f"NOTELLM_API_KEY), or listen on 127.0.0.1")


def check_serve_backend(backend: str, index: Optional[str], milvus_uri: Optional[str]) -> None:
    """faiss serves --index; milvus serves the collection at --milvus-uri (--index: fills it when empty)."""
    from notellm.errors import ConfigError
    from notellm.inference.store import BACKENDS

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {BACKENDS}, got '{backend}'")
    if backend == "faiss" and index is None:
        raise ConfigError("--backend faiss needs --index (an index folder); or serve a Milvus collection with "
                          "--backend milvus --milvus-uri")
    if backend == "faiss" and milvus_uri is not None:
        raise ConfigError("--milvus-uri is for --backend milvus")
    if backend == "milvus" and not milvus_uri:
        raise ConfigError("--backend milvus needs --milvus-uri (a milvus-lite file such as runs/notes.db, "
                          "or http://host:19530)")


@app.command("serve")
def serve(
    model: str = typer.Option(..., "--model", "-m",
                              help="model folder that embeds new notes (the one that built the index), "
                                   "or zero-shot:<backbone>"),
    index: Optional[str] = typer.Option(None, "--index", "-i",
                                        help="index folder (notellm index build); with --backend milvus only "
                                             "to fill an empty collection the first time"),
    notes: Optional[str] = typer.Option(None, help="Note table: titles of similar notes, categories for tags"),
    popularity_model: Optional[str] = typer.Option(None, "--popularity-model",
                                                   help="folder written by `notellm popularity train` (default: the --model "
                                                        "folder's own popularity head, when it has one)"),
    tagger: str = typer.Option("none", help="hashtag/category suggestions: none | model (the served NoteLLM "
                                            "generates) | knn (tags of the nearest --notes)"),
    coldstart_model: Optional[str] = typer.Option(None, "--coldstart-model",
                                                  help="folder written by `notellm coldstart sft` / `align` "
                                                       "(POST /coldstart)"),
    coldstart_language: str = typer.Option("en", help="language of the cold-start prompts it was trained on"),
    write_log: Optional[str] = typer.Option(None, "--write-log",
                                            help="enable POST/PUT/DELETE /notes: each write is fsynced to this "
                                                 "file before it is acknowledged and replayed at start"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="NOTELLM_API_KEY",
                                          help="token the write endpoints require (Authorization: Bearer)"),
    protect_reads: bool = typer.Option(False, "--protect-reads", help="every endpoint requires the token"),
    rate_limit: float = typer.Option(20.0, help="model requests per second per client (0: unlimited)"),
    backend: str = typer.Option("faiss", help="vector store: faiss (the index folder) | milvus"),
    milvus_uri: Optional[str] = typer.Option(None, help="milvus-lite file (runs/notes.db) or http://host:19530"),
    collection: str = typer.Option("notes", help="Milvus collection (--backend milvus; built by `notellm index "
                                                 "build --backend milvus`)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, help="port"),
    max_k: int = typer.Option(100, help="most neighbours a request may ask for"),
    max_notes: int = typer.Option(32, help="most notes per /embed or POST /notes request"),
    max_body_kb: int = typer.Option(1024, help="largest request body in KiB (bigger: 413)"),
    batch_wait_ms: float = typer.Option(5.0, help="how long a model request waits to share a forward pass"),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--fp32",
                                        help="precision of the model's forward passes (default: the stored "
                                             "vectors' own, else bf16 where the CPU/GPU supports it)"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve the API (`/docs`) and the web page (`/`) for creators and engineers."""
    check_exposure(host, write_log, api_key)
    check_serve_backend(backend, index, milvus_uri)
    import uvicorn

    from notellm.serving.app import create_app_from_paths
    from notellm.serving.schemas import ServingLimits

    limits = ServingLimits(max_k=max_k, max_notes=max_notes, max_body_bytes=max_body_kb * 1024,
                           model_wait_ms=batch_wait_ms)
    web = create_app_from_paths(model=model, index=index, notes=notes, popularity_model=popularity_model,
                                tagger=tagger, limits=limits, backend=backend, milvus_uri=milvus_uri,
                                collection=collection,
                                write_log=write_log, api_key=api_key, protect_reads=protect_reads,
                                rate_limit=rate_limit, coldstart_model=coldstart_model,
                                coldstart_language=coldstart_language, bf16=bf16)
    writes = f", writes logged to {write_log}" if write_log else ""
    console.print(f"[green]serving[/] http://{host}:{port}/  (API docs: /docs{writes})")
    uvicorn.run(web, host=host, port=port, log_level=log_level, workers=1)


@app.command("compact-writes")
def compact_writes(
    write_log: str = typer.Option(..., "--write-log", help="the server's write log"),
    index: Optional[str] = typer.Option(None, "--index", "-i", help="index folder the server was started with "
                                                                      "(--backend faiss)"),
    backend: str = typer.Option("faiss", help="the store the server wrote into: faiss | milvus"),
    milvus_uri: Optional[str] = typer.Option(None, help="milvus-lite file or http://host:19530 (--backend milvus)"),
    collection: str = typer.Option("notes", help="Milvus collection the server wrote into"),
) -> None:
    """Fold the write log into the store and empty the log: the index folder is rebuilt (same kind and
    settings), or the Milvus collection takes the writes and is flushed. Stop the server first; restart it
    after. Safe to rerun after a kill: replaying a log over a store that already holds its writes ends in the
    same state."""
    from notellm.errors import ConfigError
    from notellm.serving.compaction import compact_index, compact_milvus

    check_serve_backend(backend, index, milvus_uri)
    if backend == "milvus":
        if index is not None:
            raise ConfigError("--index is for --backend faiss: a Milvus server's writes go into its collection")
        result, target = compact_milvus(milvus_uri, collection, write_log), f"collection '{collection}'"
    else:
        result, target = compact_index(index, write_log), index
    console.print(f"[green]compacted[/] {result['replayed']} writes into {target}: {result['count']} notes")
