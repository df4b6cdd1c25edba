"""`python -m flows.setup`: what `make deploy` needs on the Prefect server besides the CLI steps.

Creates the global concurrency limits that hold Mixpanel's rate budget across workers and, with
``--sandbox URL``, saves a MixpanelCredentials block named ``mixpanel`` pointing at a sandbox, the sandbox's
MixpanelGdprCredentials named ``mixpanel-gdpr`` and a LocalDestination named ``local`` (only where no block of that name exists), so a first run needs no Mixpanel account.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect.blocks.core import Block

from blocks.destinations.local import LocalDestination
from blocks.gdpr import MixpanelGdprCredentials
from blocks.mixpanel import MixpanelCredentials
from flows.limits import ensure_limits
from sandbox.config import ProjectConfig


def save_sandbox_blocks(url: str, data_dir: Path) -> list[str]:
    """Save the blocks the deployments name, unless blocks of those names exist: never overwrites."""
    cfg = ProjectConfig()
    saved = []
    if not _exists(MixpanelCredentials, "mixpanel"):
        MixpanelCredentials(
            project_id=cfg.project_id,
            service_account_username=cfg.username,
            service_account_secret=cfg.secret,
            api_base_url=url,
        ).save("mixpanel")
        saved.append(f"mixpanel-credentials/mixpanel (the sandbox at {url})")
    if not _exists(MixpanelGdprCredentials, "mixpanel-gdpr"):
        MixpanelGdprCredentials(project_token=cfg.project_token, oauth_token=cfg.gdpr_oauth_token).save(
            "mixpanel-gdpr"
        )
        saved.append("mixpanel-gdpr-credentials/mixpanel-gdpr (the sandbox's tokens)")
    if not _exists(LocalDestination, "local"):
        LocalDestination(path=str(data_dir.resolve())).save("local")
        saved.append(f"mixpanel-local-destination/local ({data_dir.resolve()})")
    return saved


def _exists(block_type: type[Block], name: str) -> bool:
    try:
        block_type.load(name)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", metavar="URL", help="save sandbox credentials and a local destination")
    parser.add_argument("--data", type=Path, default=Path("data"), help="folder of the local destination")
    args = parser.parse_args(argv)
    print("global concurrency limits:", ", ".join(ensure_limits()))
    if args.sandbox:
        saved = save_sandbox_blocks(args.sandbox, args.data)
        print("saved blocks:", ", ".join(saved) if saved else "none (they exist already)")


if __name__ == "__main__":
    main()
