"""The `modelhost` command line: serve, deploy, login, logout, token, files, admin, demo."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

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
    help="Administration: prefixes, deployments, access tokens, users, groups, grants, "
    "audit log (over HTTP with your login), and signing-key rotation (local, on the server).",
    no_args_is_help=True,
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
    log_format: Annotated[
        str | None,
        typer.Option(help="Log lines as 'text' or 'json' objects (MODELHOST_LOG_FORMAT)."),
    ] = None,
    reuse_port: Annotated[
        bool,
        typer.Option(
            "--reuse-port",
            help="Share the port with other `modelhost serve` processes (SO_REUSEPORT; "
            "MODELHOST_REUSE_PORT). Give each a MODELHOST_GATEWAY_ID.",
        ),
    ] = False,
    gateway_id: Annotated[
        str | None, typer.Option(help="This gateway's name (MODELHOST_GATEWAY_ID).")
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="Where workers run: 'local' child processes, or 'ray' actors on a Ray "
            "cluster (MODELHOST_RUNTIME; docs/scale-out.md)."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="The Ray cluster, e.g. 127.0.0.1:6379 (MODELHOST_RAY_ADDRESS)."),
    ] = None,
    ray_namespace: Annotated[
        str | None,
        typer.Option(help="Ray namespace of the replica actors (MODELHOST_RAY_NAMESPACE)."),
    ] = None,
) -> None:
    """Run the gateway and the model workers (settings: MODELHOST_* variables)."""
    from modelhost import logs
    from modelhost.gateway.app import build_gateway, reuse_port_sockets, uvicorn_server

    try:
        settings = Settings.from_env(
            host=host,
            port=port,
            home=home,
            log_format=log_format,
            reuse_port=reuse_port or None,  # absent: MODELHOST_REUSE_PORT decides
            gateway_id=gateway_id,
            runtime=runtime,
            ray_address=ray_address,
            ray_namespace=ray_namespace,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--gateway-id") from None
    try:
        logs.setup(settings.log_level, settings.log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    gateway = build_gateway(settings)
    typer.echo(f"modelhost serving on {settings.public_url} (home: {settings.home})", err=True)
    uvicorn_server(gateway).run(sockets=reuse_port_sockets(settings))


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="Server URL, e.g. http://127.0.0.1:8000")],
    email: Annotated[str, typer.Option(prompt=True)],
    password: Annotated[str, typer.Option(prompt=True, hide_input=True)],
) -> None:
    """Log in and save a refresh token (mode 0600, never the password) for the SDK and CLI.

    The refresh token is replaced by a new one each time it is used; `modelhost logout`
    revokes it.
    """
    from modelhost.client import _console
    from modelhost.client._sync import run_sync

    path = run_sync(_console.login_and_save(url, email, password))
    typer.echo(f"logged in to {url} as {email}; saved a refresh token (not the password) to {path}")


@app.command()
def logout(
    url: Annotated[
        str | None, typer.Argument(help="Server URL (default: the last one logged in to).")
    ] = None,
) -> None:
    """Revoke the saved login on the server and remove it from the credentials file."""
    from modelhost.client import _console
    from modelhost.client._sync import run_sync

    server, revoked = run_sync(_console.logout_and_forget(url))
    if server is None:
        typer.echo("no saved login to remove", err=True)
        raise typer.Exit(1)
    note = "revoked on the server" if revoked else "the server did not confirm the revocation"
    typer.echo(f"logged out of {server}: saved login removed, {note}")


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
    typer.echo(json.dumps(_admin_json(method, path, url, body), indent=1))


def _admin_json(
    method: str, path: str, url: str | None, body: dict[str, object] | None = None
) -> Any:
    from modelhost.client.admin import admin_request

    return admin_request(method, path, url, body)


MH = "/console/api/modelhost"


@admin_app.command("prefix-create")
def prefix_create(key: str, url: Url = None) -> None:
    """Create a URL prefix (e.g. llm-models or models/marketing)."""
    _admin_call("POST", "/console/api/modelhost/prefixes/", url, {"key": key})


PredictTimeout = Annotated[
    float | None,
    typer.Option(help="Predict deadline in seconds (default MODELHOST_PREDICT_TIMEOUT_S)."),
]
MaxQueue = Annotated[
    int | None,
    typer.Option(help="Requests in flight per version before 429 (default MODELHOST_MAX_QUEUE)."),
]
MemoryMb = Annotated[int | None, typer.Option(help="Memory bound per worker process, MiB.")]


@dataclass
class DeploymentOptions:
    """The per-deployment settings both deployment commands take (null: not sent)."""

    predict_timeout_s: float | None = None
    max_queue: int | None = None
    memory_mb: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    scale_down_delay_s: float | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    ray_resource: list[str] | None = None
    placement: str | None = None

    @classmethod
    def of(cls, given: dict[str, Any]) -> DeploymentOptions:
        """The options among a command's parameters (its `locals()`)."""
        return cls(**{name: given[name] for name in cls.__dataclass_fields__})

    def body(self) -> dict[str, object]:
        given = {k: v for k, v in vars(self).items() if v is not None and k != "ray_resource"}
        if self.ray_resource:
            given["ray_resources"] = _resources(self.ray_resource)
        return given


def _resources(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, amount = item.partition("=")
        try:
            out[name] = float(amount) if sep else 1.0
        except ValueError:
            raise typer.BadParameter(f"{item!r}: use NAME=AMOUNT, e.g. node_b=0.01") from None
    return out


MinReplicas = Annotated[
    int | None, typer.Option(help="Autoscaling: fewest replicas per version (0 = scale to zero).")
]
MaxReplicas = Annotated[
    int | None, typer.Option(help="Autoscaling: most replicas per version (sets autoscaling on).")
]
TargetOngoing = Annotated[
    float | None, typer.Option(help="Autoscaling: requests in flight per replica to aim for.")
]
ScaleDownDelay = Annotated[
    float | None, typer.Option(help="Autoscaling: seconds of low load before a replica goes.")
]
NumCpus = Annotated[float | None, typer.Option(help="Ray runtime: CPUs each replica reserves.")]
NumGpus = Annotated[float | None, typer.Option(help="Ray runtime: GPUs each replica reserves.")]
RayResource = Annotated[
    list[str] | None,
    typer.Option(help="Ray runtime: a custom resource per replica, NAME=AMOUNT (repeatable)."),
]
Placement = Annotated[
    str | None, typer.Option(help="Ray runtime: 'pack' replicas together or 'spread' them.")
]


@admin_app.command("deployment-create")
def deployment_create(
    key: str,
    replicas: int = 1,
    predict_timeout_s: PredictTimeout = None,
    max_queue: MaxQueue = None,
    memory_mb: MemoryMb = None,
    min_replicas: MinReplicas = None,
    max_replicas: MaxReplicas = None,
    target_ongoing_requests: TargetOngoing = None,
    scale_down_delay_s: ScaleDownDelay = None,
    num_cpus: NumCpus = None,
    num_gpus: NumGpus = None,
    ray_resource: RayResource = None,
    placement: Placement = None,
    url: Url = None,
) -> None:
    """Create a deployment; each of its model versions runs in `replicas` worker processes."""
    options = DeploymentOptions.of(locals())
    _admin_call(
        "POST", f"{MH}/deployments/", url, {"key": key, "replicas": replicas, **options.body()}
    )


@admin_app.command("deployment-set")
def deployment_set(
    key: str,
    replicas: Annotated[int | None, typer.Option(help="Worker processes per version.")] = None,
    predict_timeout_s: PredictTimeout = None,
    max_queue: MaxQueue = None,
    memory_mb: MemoryMb = None,
    min_replicas: MinReplicas = None,
    max_replicas: MaxReplicas = None,
    target_ongoing_requests: TargetOngoing = None,
    scale_down_delay_s: ScaleDownDelay = None,
    num_cpus: NumCpus = None,
    num_gpus: NumGpus = None,
    ray_resource: RayResource = None,
    placement: Placement = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(help="Back to the server's setting (repeatable): any setting's name."),
    ] = None,
    url: Url = None,
) -> None:
    """Change a deployment live: replicas start or drain now, max_queue and autoscaling
    apply now, the predict deadline, memory bound and placement to workers started from now
    on."""
    options = DeploymentOptions.of(locals())
    body: dict[str, object] = {} if replicas is None else {"replicas": replicas}
    body.update(options.body())
    if clear:
        body["clear"] = clear
    _admin_call("PATCH", f"{MH}/deployments/{key}/", url, body)


@admin_app.command("replicas")
def replicas_set(
    deployment: Annotated[str, typer.Argument(help="Deployment key.")],
    count: Annotated[int, typer.Argument(min=1, max=64, help="Worker processes per version.")],
    url: Url = None,
) -> None:
    """Set how many worker processes each version of the deployment's models runs, live
    (no request is dropped: surplus replicas drain first)."""
    _admin_call("PATCH", f"{MH}/deployments/{deployment}/", url, {"replicas": count})


versions_app = typer.Typer(
    help="A model's versions and traffic: list, weights, pin, unpin, rollback, delete. MODEL is "
    "a model URL (http://host/prefix/name/) or its model id.",
    no_args_is_help=True,
)
admin_app.add_typer(versions_app, name="versions")
Model = Annotated[str, typer.Argument(help="Model URL or model id.")]


@versions_app.command("list")
def versions_list(model: Model, url: Url = None) -> None:
    """Every version with its state, weight and replicas, and what the versionless URL
    serves now."""
    _admin_call("GET", f"{MH}/models/{_model_id(model, url)}/versions/", url)


@versions_app.command("weights")
def versions_weights(
    model: Model,
    weights: Annotated[
        list[str] | None,
        typer.Argument(help="VERSION=WEIGHT pairs, e.g. v1=70 v2=30; none: newest serves."),
    ] = None,
    url: Url = None,
) -> None:
    """Split the versionless URL across ready versions by weight (versions not named get 0;
    a new deploy gets 0 until given some). No pairs: back to "the newest ready version
    serves everything". Clients sending x-prt-session-key stay on one version."""
    pairs: dict[str, object] = {}
    for item in weights or []:
        version, sep, weight = item.partition("=")
        if not sep or not weight.isdigit():
            _fail(f"{item!r} is not VERSION=WEIGHT (e.g. v1=70)")
        pairs[version] = int(weight)
    _admin_call("POST", f"{MH}/models/{_model_id(model, url)}/traffic/", url, {"weights": pairs})


@versions_app.command("pin")
def versions_pin(
    model: Model,
    version: Annotated[str, typer.Argument(help="Version, e.g. v2.")],
    url: Url = None,
) -> None:
    """Serve only this version on the versionless URL (started if it is not running; what
    served before keeps serving until it is ready)."""
    _admin_call("POST", f"{MH}/models/{_model_id(model, url)}/pin/", url, {"version": version})


@versions_app.command("unpin")
def versions_unpin(model: Model, url: Url = None) -> None:
    """Lift the pin: weights (or the newest ready version) decide again."""
    _admin_call("DELETE", f"{MH}/models/{_model_id(model, url)}/pin/", url)


@versions_app.command("rollback")
def versions_rollback(model: Model, url: Url = None) -> None:
    """Pin the version before the one serving now (restarted if it was unloaded)."""
    _admin_call("POST", f"{MH}/models/{_model_id(model, url)}/rollback/", url, {})


@versions_app.command("delete")
def versions_delete(
    model: Model,
    version: Annotated[str, typer.Argument(help="Version, e.g. v1.")],
    url: Url = None,
) -> None:
    """Delete a version: out of routing at once (its URL answers 404), in-flight requests
    finish, its workers stop, and it never starts again."""
    _admin_call("DELETE", f"{MH}/models/{_model_id(model, url)}/versions/{version}/", url)


def _model_id(model: str, url: str | None) -> int:
    if model.isdigit():
        return int(model)
    from urllib.parse import urlparse

    path = urlparse(model).path.strip("/")
    for row in _admin_json("GET", f"{MH}/models/", url):
        if f"{row['prefix']}/{row['name']}" == path:
            return int(row["model_id"])
    _fail(f"no model at {model!r}; give its URL (http://host/prefix/name/) or its model id")


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


@admin_app.command("user-list")
def user_list(url: Url = None) -> None:
    """List users: id, email, is_admin, is_active."""
    _admin_call("GET", f"{MH}/users/", url)


@admin_app.command("group-create")
def group_create(
    name: Annotated[str, typer.Argument(help="Group name, e.g. data-science.")],
    url: Url = None,
) -> None:
    """Create a group of users; grants given to the group apply to all its members."""
    _admin_call("POST", f"{MH}/groups/", url, {"name": name})


@admin_app.command("group-list")
def group_list(url: Url = None) -> None:
    """List groups with their members' emails."""
    _admin_call("GET", f"{MH}/groups/", url)


@admin_app.command("group-add")
def group_add(
    name: Annotated[str, typer.Argument(help="Group name.")],
    email: Annotated[str, typer.Argument(help="Email of an existing user.")],
    url: Url = None,
) -> None:
    """Add a user to a group."""
    group_id = _group_id(name, url)
    _admin_call("POST", f"{MH}/groups/{group_id}/members/", url, {"email": email})


@admin_app.command("group-remove")
def group_remove(
    name: Annotated[str, typer.Argument(help="Group name.")],
    email: Annotated[str, typer.Argument(help="Email of a member.")],
    url: Url = None,
) -> None:
    """Remove a user from a group (their grants through it stop applying)."""
    group_id = _group_id(name, url)
    users = _admin_json("GET", f"{MH}/users/", url)
    user_ids = [u["id"] for u in users if str(u.get("email", "")).lower() == email.lower()]
    if not user_ids:
        _fail(f"no user {email!r}; `modelhost admin user-list` shows who exists")
    _admin_call("DELETE", f"{MH}/groups/{group_id}/members/{user_ids[0]}/", url)


class Permission(StrEnum):
    use = "use"
    deploy = "deploy"


@admin_app.command("grant-create")
def grant_create(
    permission: Annotated[
        Permission,
        typer.Option(
            help="use: get session tokens for and call the models; deploy: also deploy "
            "new versions."
        ),
    ],
    group: Annotated[str | None, typer.Option(help="Grant to this group (by name).")] = None,
    user: Annotated[str | None, typer.Option(help="Grant to this user (by email).")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="On every model under this prefix, e.g. llm-models.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="On one model, by URL, e.g. http://host/llm-models/my-model/."),
    ] = None,
    url: Url = None,
) -> None:
    """Give a group or a user a permission on a prefix or a model.

    Example: modelhost admin grant-create --group data-science --prefix llm-models
    --permission use
    """
    if (group is None) == (user is None):
        _fail("give exactly one of --group NAME or --user EMAIL")
    if (prefix is None) == (model is None):
        _fail("give exactly one of --prefix KEY or --model URL")
    body: dict[str, object] = {"permission": permission.value}
    body.update({"group": group} if group is not None else {"user": user})
    body.update({"prefix": prefix} if prefix is not None else {"model_url": model})
    _admin_call("POST", f"{MH}/grants/", url, body)


@admin_app.command("grant-list")
def grant_list(url: Url = None) -> None:
    """List grants (who may use or deploy what)."""
    _admin_call("GET", f"{MH}/grants/", url)


@admin_app.command("grant-revoke")
def grant_revoke(
    grant_id: Annotated[int, typer.Argument(help="Grant id (see grant-list).")],
    url: Url = None,
) -> None:
    """Revoke a grant."""
    _admin_call("DELETE", f"{MH}/grants/{grant_id}/", url)


@admin_app.command("audit")
def audit(
    limit: Annotated[int, typer.Option(min=1, help="How many entries, newest first.")] = 50,
    url: Url = None,
) -> None:
    """Show the audit log: logins, grants, deploys, token and user changes."""
    _admin_call("GET", f"{MH}/audit/?limit={limit}", url)


@admin_app.command("rotate-keys")
def rotate_keys(
    home: Annotated[
        Path | None,
        typer.Option(help="The server's state folder (MODELHOST_HOME, default ~/.modelhost)."),
    ] = None,
    drop_old: Annotated[
        bool,
        typer.Option(
            "--drop-old",
            help="Stop accepting every old key at once (for a leaked key): everybody has to "
            "log in again and session tokens must be fetched anew.",
        ),
    ] = False,
) -> None:
    """Make a new token-signing key (run on the server host; works on the key file).

    Old keys stay accepted for the longest token lifetime (MODELHOST_REFRESH_TOKEN_TTL_S).

    Keys past that deadline are removed. A running server picks up the new key in seconds.
    """
    from modelhost.auth.keyring import rotate

    settings = Settings.from_env(home=home)
    if settings.jwt_secret:
        _fail(
            "MODELHOST_JWT_SECRET is set, so the server does not use the key file. To rotate: "
            "set MODELHOST_JWT_PREVIOUS_KEYS=<old kid>:<old secret> (the old kid is "
            "MODELHOST_JWT_KID, default 'env'), a new MODELHOST_JWT_KID and a new "
            "MODELHOST_JWT_SECRET, and restart the server"
        )
    grace = max(
        settings.refresh_token_ttl_s, settings.access_token_ttl_s, settings.session_token_ttl_s
    )
    done = rotate(settings.jwt_key_path, 0 if drop_old else grace, drop_old=drop_old)
    typer.echo(f"new signing key id: {done.new_kid} (in {settings.jwt_key_path}, mode 0600)")
    for kid, deadline in sorted(done.ring.retired.items(), key=lambda item: item[1]):
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(deadline))
        typer.echo(f"still accepted until {until}: key id {kid}")
    if done.pruned:
        typer.echo(f"removed expired key id(s): {', '.join(done.pruned)}")
    typer.echo(
        "Next: a running server switches to the new key within a few seconds (it reloads the "
        "key file when it changes); restarting it works too. "
        + (
            "Tokens signed with the removed keys are refused from now on."
            if drop_old
            else "Nobody is logged out. If a key may have leaked, run this again with --drop-old."
        )
    )


def _group_id(name: str, url: str | None) -> int:
    groups = _admin_json("GET", f"{MH}/groups/", url)
    for group in groups:
        if group.get("name") == name:
            return int(group["id"])
    _fail(f"no group named {name!r}; `modelhost admin group-list` shows them")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


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


def main() -> None:
    from modelhost.errors import ModelhostError

    try:
        app()
    except ModelhostError as exc:  # a user-facing problem: say it, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
