"""Hugging Face Hub conventions for the pairs and model folders, and ``persodpo push``.

The pairs folder is a Hub dataset repository as it is: ``README.md`` (the Hub's YAML front matter,
then the data card), Parquet under ``data/`` mapped to the ``train`` split by the front matter's
``configs``, so ``datasets.load_dataset(PAIRS_DIR)`` and the Hub's viewer read the same files.
The model folder (train output) is a Hub model repository (its README.md is the model card).

    persodpo push --input PAIRS_DIR --to hf:ORG/NAME [--dry-run] [--private]

pushes a complete output with ``huggingface_hub``'s ``upload_folder`` (token: ``HF_TOKEN`` or
``huggingface-cli login``); ``--dry-run`` lists what would be uploaded and contacts nobody.
"""

from __future__ import annotations

import os
import re

import yaml

DATA_DIR = "data"
TRAIN_FILES = f"{DATA_DIR}/train-*.parquet"
# Never uploaded: the stage's completion marker, half-written parts, Ray Train's checkpoints
# (resumable training state, many GB). TensorBoard events go: the Hub shows them as training metrics.
IGNORE = ["_SUCCESS", "*.tmp", "**/*.tmp", "checkpoints/**"]
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def size_category(n: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1T" if n > 10**12 else "1B<n<10B"


def front_matter(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip() + "\n---\n\n"


def dataset_card(body: str, *, n_pairs: int, recipe: str, source: str | None = None) -> str:
    """README.md of the pairs folder: Hub metadata, then the data card (``body``)."""
    tags = ["dpo", "preference", "persona", "synthetic", "persodpo", f"recipe-{recipe}"]
    if source:
        tags.append(f"source-{source}")
    meta = {
        # The pairs derive from the source dialogs and the generators' replies, whose terms apply:
        # the card says so below; set a precise license before publishing if you know it.
        "license": "other",
        "license_name": "derived-see-card",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": tags,
        "size_categories": [size_category(n_pairs)],
        "pretty_name": f"persodpo pairs ({recipe})",
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": TRAIN_FILES}]}],
    }
    licence = ("\n\n## License\n\nThese pairs are derived from the source dialogs "
               f"(`{source or 'see the prompts'}`) and from model replies; the source dataset's license and "
               "the generators' terms of use apply. `license: other` until you set the precise one.\n")
    usage = ("\n\n## Loading\n\n```python\nimport datasets\n"
             "ds = datasets.load_dataset(\"ORG/NAME\", split=\"train\")   # or the local folder\n```\n"
             "`prompt`, `chosen`, `rejected` are in TRL's conversational form: `DPOTrainer` takes them unchanged.\n")
    return front_matter(meta) + body.rstrip() + usage + licence


def model_card_metadata(*, base_model: str, datasets: list[str] | None = None) -> dict:
    """The model card's Hub metadata (``datasets``: Hub ids of the training data, when known)."""
    meta = {"library_name": "transformers", "base_model": base_model, "tags": ["trl", "dpo", "persodpo"],
            "pipeline_tag": "text-generation"}
    if datasets:
        meta["datasets"] = list(datasets)
    return meta


def hub_dataset_id(uri: str | None) -> str | None:
    """``hf:ORG/NAME`` or ``hf://datasets/ORG/NAME[/...]`` -> ``ORG/NAME``; anything else: None."""
    if not uri:
        return None
    for prefix in ("hf://datasets/", "hf:"):
        if uri.startswith(prefix):
            parts = uri[len(prefix):].strip("/").split("/")
            repo = "/".join(parts[:2])
            return repo if _REPO.match(repo) else None
    return None


# -- push -------------------------------------------------------------------------------------

def parse_target(target: str | None) -> str:
    from persodpo.errors import ConfigError

    if not target:
        raise ConfigError("push needs --to hf:ORG/NAME")
    if not target.startswith("hf:"):
        raise ConfigError(f"--to {target!r}: expected hf:ORG/NAME (a Hugging Face Hub repository)")
    repo = target[3:]
    if not _REPO.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise ConfigError(f"--to {target!r}: {repo!r} is not a Hub repository id (ORG/NAME: letters, digits, "
                          "'-', '_', '.', at most 96 characters each)")
    return repo


def plan(folder: str) -> dict:
    """What ``upload_folder`` would send: repo type, files (relative paths) and bytes."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    from persodpo import storage as st
    from persodpo.errors import InputError

    if "://" in folder:
        raise InputError("push reads a local folder: copy the output here first (e.g. aws s3 sync)", file=folder)
    if not os.path.isdir(folder):
        raise InputError("not a folder", file=folder)
    if not st.is_complete(folder):
        raise InputError("not a complete stage output (no _SUCCESS): finish or rerun the stage first", file=folder)
    readme = os.path.join(folder, "README.md")
    if not os.path.exists(readme):
        raise InputError("no README.md card: rerun the stage with this persodpo version", file=folder)
    stage = st.read_manifest(folder).get("stage")
    repo_type = "dataset" if stage == "pairs" else "model" if stage == "train" else None
    if repo_type is None:
        raise InputError(f"stage {stage!r}: only pairs (dataset) and train (model) outputs are pushed", file=folder,
                         field="_manifest.json:stage")
    files = []
    for root, _, names in os.walk(folder):
        files += [os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/") for n in names]
    ignore = IGNORE + DEFAULT_IGNORE_PATTERNS
    kept = sorted(filter_repo_objects(files, ignore_patterns=ignore))
    return {"repo_type": repo_type, "files": kept, "bytes": sum(os.path.getsize(os.path.join(folder, f)) for f in kept),
            "ignore_patterns": ignore}


def push(folder: str, target: str, *, dry_run: bool = False, private: bool = False,
         message: str | None = None) -> dict:
    repo = parse_target(target)
    p = plan(folder)
    summary = {"stage": "push", "repo_id": repo, "repo_type": p["repo_type"], "input": folder,
               "n_files": len(p["files"]), "bytes": p["bytes"], "dry_run": dry_run}
    if dry_run:
        return {**summary, "files": p["files"]}
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type=p["repo_type"], private=private, exist_ok=True)
    # a copy: upload_folder appends its default patterns to the list it is given
    info = api.upload_folder(repo_id=repo, repo_type=p["repo_type"], folder_path=folder, ignore_patterns=list(IGNORE),
                             commit_message=message or f"persodpo push {os.path.basename(folder.rstrip('/'))}")
    return {**summary, "commit_url": str(getattr(info, "commit_url", info))}


def push_command(args) -> dict:
    """``persodpo push`` (not a stage: no config; ``--set`` and ``--config`` are refused)."""
    from persodpo.errors import ConfigError

    if args.config or args.overrides:
        raise ConfigError("push takes no --config/--set: use --input, --to, --dry-run, --private")
    if not args.flag_input:
        raise ConfigError("push needs --input FOLDER (a pairs or train output)")
    return push(args.flag_input, args.flag_to, dry_run=bool(args.flag_dry_run), private=bool(args.flag_private),
                message=args.flag_message)


def card_front_matter(text: str) -> dict:
    """The YAML front matter of a card (empty dict when there is none)."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    return yaml.safe_load(text[4:end]) if end > 0 else {}



