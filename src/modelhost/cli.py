"""The `modelhost` command line: serve, deploy, login, token, files, admin, demo."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from modelhost.settings import Settings

app = typer.Typer(
    help="Host LLMs and Python models behind an authenticated HTTP API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
files_app = typer.Typer(
    help="Object-store files (model weights, tokenizers).", no_args_is_help=True
)
admin_app = typer.Typer(
    help="Administration: prefixes, deployments, access tokens.", no_args_is_help=True
)
app.add_typer(files_app, name="files")
app.add_typer(admin_app, name="admin")

Url = Annotated[
    str | None, typer.Option("--url", help="Server URL (default: saved login or MODELHOST_URL).")
]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (MODELHOST_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MODELHOST_PORT).")] = None,
    home: Annotated[
        Path | None, typer.Option(help="State folder (MODELHOST_HOME, default ~/.modelhost).")
    ] = None,
) -> None:
    """Run the gateway and the model workers (settings: MODELHOST_* variables)."""
    from modelhost.gateway.app import build_gateway, uvicorn_server

    settings = Settings.from_env(host=host, port=port, home=home)
    _logging(settings.log_level)
    gateway = build_gateway(settings)
    typer.echo(f"modelhost serving on {settings.public_url} (home: {settings.home})", err=True)
    uvicorn_server(gateway).run()


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="Server URL, e.g. http://127.0.0.1:8000")],
    email: Annotated[str, typer.Option(prompt=True)],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True)],
) -> None:
    """Check credentials and save them (mode 0600) for the SDK and the CLI."""
    from modelhost.client import login as do_login

    do_login(url, email, password)
    typer.echo(f"logged in to {url}")


@app.command()
def deploy(
    model_dir: Annotated[
        Path, typer.Argument(help="The model folder (model.py, model.json).")
    ] = Path("."),
    deployment: Annotated[
        str, typer.Option("--deployment", help="Deployment key, e.g. llm-depl.")
    ] = ...,  # type: ignore[assignment]
    prefix: Annotated[str, typer.Option("--prefix", help="URL prefix, e.g. llm-models.")] = ...,  # type: ignore[assignment]
    name: Annotated[
        str, typer.Option("--name", help="Model name, e.g. llama-1b-basic-test.")
    ] = ...,  # type: ignore[assignment]
    url: Url = None,
) -> None:
    """Upload a model folder as a new version and wait until it serves (or say why not)."""
    from modelhost.client import deploy as do_deploy

    typer.echo(
        f"deploying {model_dir} as {prefix}/{name}: uploading, then waiting until the new "
        "version is ready (model loading can take a while) ...",
        err=True,
    )
    api_url, version_url, meta_url = do_deploy(deployment, prefix, name, model_dir, url)
    typer.echo(
        f"api_url:         {api_url}\napi_version_url: {version_url}\napi_meta_url:    {meta_url}"
    )


@app.command()
def token(
    api_url: Annotated[
        str, typer.Argument(help="A model URL, e.g. http://127.0.0.1:8000/llm-models/x/")
    ],
) -> None:
    """Print a model session token (4 h) for a model URL."""
    from modelhost.client import get_session_token

    typer.echo(get_session_token(api_url))


@files_app.command("upload")
def files_upload(
    local_dir: Annotated[Path, typer.Argument(help="Local folder to upload.")],
    key_prefix: Annotated[str, typer.Argument(help="Key prefix, e.g. cache/llama-1b-instruct/")],
) -> None:
    """Upload a folder to the object store configured by MODELHOST_STORE_URL."""
    from modelhost.store import open_store, upload_dir

    settings = Settings.from_env()
    store = open_store(settings.store_url, settings.s3_endpoint_url)
    keys = upload_dir(store, local_dir, key_prefix)
    typer.echo(f"uploaded {len(keys)} file(s) to {settings.store_url} under {key_prefix}")


def _admin_call(
    method: str, path: str, url: str | None, body: dict[str, object] | None = None
) -> None:
    from modelhost.client.admin import admin_request

    typer.echo(json.dumps(admin_request(method, path, url, body), indent=1))


@admin_app.command("prefix-create")
def prefix_create(key: str, url: Url = None) -> None:
    """Create a URL prefix (e.g. llm-models or models/marketing)."""
    _admin_call("POST", "/console/api/modelhost/prefixes/", url, {"key": key})


@admin_app.command("deployment-create")
def deployment_create(key: str, replicas: int = 1, url: Url = None) -> None:
    """Create a deployment; each of its model versions runs in `replicas` worker processes."""
    _admin_call(
        "POST", "/console/api/modelhost/deployments/", url, {"key": key, "replicas": replicas}
    )


@admin_app.command("token-create")
def token_create(
    prefix: Annotated[str | None, typer.Option(help="Every model under this prefix.")] = None,
    model_id: Annotated[int | None, typer.Option(help="Just this model.")] = None,
    ttl_s: Annotated[int | None, typer.Option(help="Lifetime in seconds (default: none).")] = None,
    name: str = "",
    url: Url = None,
) -> None:
    """Create a long-lived access token (shown once, stored hashed)."""
    _admin_call(
        "POST",
        "/console/api/modelhost/access-tokens/",
        url,
        {"prefix": prefix, "model_id": model_id, "ttl_s": ttl_s, "name": name},
    )


@admin_app.command("token-revoke")
def token_revoke(token_id: int, url: Url = None) -> None:
    """Revoke an access token (applies within MODELHOST_REVOCATION_POLL_S seconds)."""
    _admin_call("DELETE", f"/console/api/modelhost/access-tokens/{token_id}/", url)


@admin_app.command("user-create")
def user_create(
    email: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    admin: Annotated[bool, typer.Option("--admin", help="Give admin rights.")] = False,
    url: Url = None,
) -> None:
    """Create a user who can log in and get model session tokens."""
    _admin_call(
        "POST",
        "/console/api/modelhost/users/",
        url,
        {"email": email, "password": password, "is_admin": admin},
    )


@admin_app.command("user-disable")
def user_disable(user_id: int, url: Url = None) -> None:
    """Disable a user; their tokens stop working within MODELHOST_REVOCATION_POLL_S seconds."""
    _admin_call("POST", f"/console/api/modelhost/users/{user_id}/disable/", url, {})


@app.command()
def demo(
    port: Annotated[int | None, typer.Option(help="Port (MODELHOST_PORT, default 8000).")] = None,
    home: Annotated[
        Path | None, typer.Option(help="State folder (default ~/.modelhost-demo).")
    ] = None,
) -> None:
    """Prepare the demo LLM, start the server, deploy the seed's model and print how to call it."""
    from modelhost.demo import run_demo

    run_demo(port=port, home=home)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    from modelhost.errors import ModelhostError

    try:
        app()
    except ModelhostError as exc:  # a user-facing problem: say it, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
