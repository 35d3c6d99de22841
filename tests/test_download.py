"""tools/download_checkpoints.py without the network: arguments, the plan, skip-if-present, the
verification and every error message, against fake `snapshot_download` / `list_repo_files` that
write the files of an imagined repository (or raise the hub's own error types)."""
from __future__ import annotations

import fnmatch
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "download_checkpoints.py"

from cosmos_dist.commands import download_checkpoints as dl  # noqa: E402

# What the imagined hub repositories hold (names as on huggingface.co; contents are placeholders).
REPOS = {
    **{
        f"nvidia/Cosmos-Predict1-{m}-{k}": ["README.md", "config.json", "model.pt", ".gitattributes", "guardrail/x.bin"]
        for m in ("7B", "14B")
        for k in ("Text2World", "Video2World")
    },
    "nvidia/Cosmos-Tokenize1-CV8x8x8-720p": [
        "README.md", "config.json", "autoencoder.jit", "encoder.jit", "decoder.jit", "mean_std.pt", ".gitattributes",
    ],
    "google-t5/t5-11b": [
        "README.md", "config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin",
        "tf_model.h5", "flax_model.msgpack", "spiece.model", "tokenizer.json", ".gitattributes",
    ],
}


class FakeHub:
    """Writes every file of the repository that matches allow_patterns (as snapshot_download does);
    `drop` leaves some out (an interrupted or changed repository); `error` raises instead."""

    def __init__(self, repos=None, drop=(), error=None, list_error=None):
        self.repos = repos or REPOS
        self.drop = set(drop)
        self.error = error
        self.list_error = list_error
        self.calls: list[dict] = []
        self.list_calls: list[str] = []

    def snapshot_download(self, repo_id, *, local_dir, allow_patterns=None, token=None, force_download=False, **kw):
        self.calls.append(dict(repo_id=repo_id, local_dir=local_dir, allow_patterns=list(allow_patterns), token=token,
                               force_download=force_download))
        if self.error is not None:
            raise self.error
        for name in self.repos[repo_id]:
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns) and name not in self.drop:
                path = Path(local_dir) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x" * 8)
        return local_dir

    def list_repo_files(self, repo_id, token=None):
        self.list_calls.append(repo_id)
        if self.list_error is not None:
            raise self.list_error
        return list(self.repos[repo_id])

    def hub(self):
        return dl.Hub(snapshot_download=self.snapshot_download, list_repo_files=self.list_repo_files)


def run_main(argv, hub=None):
    out, err = io.StringIO(), io.StringIO()
    code = dl.main(argv, hub=hub.hub() if hub is not None else None, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


# ---- arguments ------------------------------------------------------------------------------------------
def test_defaults_are_7b_text2world():
    args = dl.parse_args([])
    assert (args.models, args.kinds, args.checkpoint_dir, args.token, args.force, args.dry_run) == (
        ["7B"], ["Text2World"], "checkpoints", None, False, False,
    )


@pytest.mark.parametrize(
    "argv, models, kinds",
    [
        (["--model", "14B"], ["14B"], ["Text2World"]),
        (["--model", "7B,14B"], ["7B", "14B"], ["Text2World"]),
        (["--model", "14b", "--model", "7b", "--model", "7B"], ["7B", "14B"], ["Text2World"]),
        (["--kind", "Video2World"], ["7B"], ["Video2World"]),
        (["--kind", "video2world", "--kind", "TEXT2WORLD"], ["7B"], ["Text2World", "Video2World"]),
        (["--model", " 7B , 14B ", "--kind", "Text2World,Video2World"], ["7B", "14B"], ["Text2World", "Video2World"]),
    ],
)
def test_model_and_kind_lists(argv, models, kinds):
    args = dl.parse_args(argv)
    assert args.models == models and args.kinds == kinds


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "3B"], "--model: unknown value '3B'; choose from 7B, 14B"),
        (["--kind", "Image2World"], "--kind: unknown value 'Image2World'; choose from Text2World, Video2World"),
        (["--model", ","], "--model: give at least one of 7B, 14B"),
    ],
)
def test_bad_arguments_exit_2_with_the_valid_values(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        dl.parse_args(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_token_from_flag_or_env(monkeypatch):
    assert dl.parse_args(["--token", "hf_flag"]).token == "hf_flag"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert dl.parse_args([]).token == "hf_env"
    assert dl.parse_args(["--token", "hf_flag"]).token == "hf_flag"


# ---- the plan -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("models", [["7B"], ["14B"], ["7B", "14B"]])
@pytest.mark.parametrize("kinds", [["Text2World"], ["Video2World"], ["Text2World", "Video2World"]])
def test_plan_for_each_combination(tmp_path, models, kinds):
    plan = dl.build_plan(models, kinds, tmp_path)
    dits = [(m, k) for m in models for k in kinds]
    assert len(plan) == len(dits) + 2  # the tokenizer and T5 once, whatever the number of models
    for target, (m, k) in zip(plan, dits):
        assert target.repo_id == f"nvidia/Cosmos-Predict1-{m}-{k}"
        assert target.local_dir == tmp_path / f"Cosmos-Predict1-{m}-{k}"
        assert set(target.allow_patterns) == {"README.md", "model.pt", "config.json"}
        assert target.required == (("model.pt",),)
        assert not target.choose_weights
    tok, t5 = plan[-2:]
    assert tok.repo_id == "nvidia/Cosmos-Tokenize1-CV8x8x8-720p"
    assert tok.local_dir == tmp_path / "Cosmos-Tokenize1-CV8x8x8-720p"
    assert set(tok.allow_patterns) == {"*.jit", "mean_std.pt", "config.json"}
    assert {g[0] for g in tok.required} == {"encoder.jit", "decoder.jit", "mean_std.pt"}
    assert t5.repo_id == "google-t5/t5-11b"
    assert t5.local_dir == tmp_path / "google-t5" / "t5-11b"
    assert {"config.json", "tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json"} <= set(
        t5.allow_patterns
    )
    assert t5.choose_weights
    # No weight file in the static patterns: the one weight form is chosen from the repo's listing.
    assert not any(p.endswith((".bin", ".safetensors", ".h5", ".msgpack")) for p in t5.allow_patterns)


def test_plan_matches_what_the_pipeline_reads(tmp_path):
    """The 7B / 14B model configs point at the folders the plan fills."""
    from omegaconf import OmegaConf

    from cosmos_dist.config import ModelConfig

    plan = dl.build_plan(["7B", "14B"], ["Text2World"], tmp_path)
    dirs = {t.local_dir for t in plan}
    for name in ("7b_text2world", "14b_text2world"):
        # The YAML holds only what differs from the schema (config.ModelConfig): read it merged, as a run does.
        m = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
        for key in ("dit_dir", "tokenizer_dir", "text_encoder_dir"):
            assert tmp_path / m[key] in dirs, (name, key)


@pytest.mark.parametrize(
    "files, expect",
    [
        (["model.safetensors", "pytorch_model.bin", "tf_model.h5"], ["model.safetensors"]),
        (["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"], ["pytorch_model.bin"]),
        (["model.safetensors.index.json", "model-00001-of-00002.safetensors", "pytorch_model.bin"],
         ["model.safetensors.index.json", "model-*-of-*.safetensors"]),
        (["pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin"],
         ["pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]),
    ],
)
def test_t5_weights_one_copy_safetensors_first(files, expect):
    assert dl.choose_weight_patterns(files) == expect


def test_t5_weights_none_loadable():
    with pytest.raises(dl.DownloadError, match="no PyTorch weights"):
        dl.choose_weight_patterns(["tf_model.h5", "flax_model.msgpack", "config.json"])


# ---- what is on disk ------------------------------------------------------------------------------------
def _t5(tmp_path):
    return dl.build_plan(["7B"], ["Text2World"], tmp_path)[-1]


def test_completeness_needs_non_zero_files(tmp_path):
    t5 = _t5(tmp_path)
    d = t5.local_dir
    d.mkdir(parents=True)
    assert dl.missing_files(t5) == [
        "config.json", "tokenizer.json or spiece.model", "weights (model.safetensors or pytorch_model.bin, or their shards)",
    ]
    (d / "config.json").write_text("{}")
    (d / "spiece.model").write_bytes(b"x")
    (d / "pytorch_model.bin").write_bytes(b"")  # an empty file is an interrupted download
    assert dl.missing_files(t5) == ["weights (model.safetensors or pytorch_model.bin, or their shards)"]
    (d / "pytorch_model.bin").write_bytes(b"x")
    assert dl.is_complete(t5)


def test_sharded_weights_complete_only_with_every_shard(tmp_path):
    t5 = _t5(tmp_path)
    d = t5.local_dir
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    (d / shards[0]).write_bytes(b"x")
    assert not dl.is_complete(t5)
    (d / shards[1]).write_bytes(b"x")
    assert dl.is_complete(t5)
    (d / "model.safetensors.index.json").write_text("not json")
    assert not dl.is_complete(t5)


# ---- fetching -------------------------------------------------------------------------------------------
def test_fetch_writes_the_layout_and_verifies(tmp_path):
    hub = FakeHub()
    code, out, err = run_main(["--model", "7B", "--checkpoint-dir", str(tmp_path), "--token", "hf_x"], hub)
    assert code == 0, err
    assert [c["repo_id"] for c in hub.calls] == [
        "nvidia/Cosmos-Predict1-7B-Text2World", "nvidia/Cosmos-Tokenize1-CV8x8x8-720p", "google-t5/t5-11b",
    ]
    assert all(c["token"] == "hf_x" and c["force_download"] is False for c in hub.calls)
    assert hub.calls[0]["local_dir"] == str(tmp_path / "Cosmos-Predict1-7B-Text2World")
    assert hub.calls[2]["local_dir"] == str(tmp_path / "google-t5" / "t5-11b")
    assert hub.list_calls == ["google-t5/t5-11b"]  # only T5 needs its file list (to pick one weight copy)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "Cosmos-Predict1-7B-Text2World/README.md",
        "Cosmos-Predict1-7B-Text2World/config.json",
        "Cosmos-Predict1-7B-Text2World/model.pt",
        "Cosmos-Tokenize1-CV8x8x8-720p/autoencoder.jit",
        "Cosmos-Tokenize1-CV8x8x8-720p/config.json",
        "Cosmos-Tokenize1-CV8x8x8-720p/decoder.jit",
        "Cosmos-Tokenize1-CV8x8x8-720p/encoder.jit",
        "Cosmos-Tokenize1-CV8x8x8-720p/mean_std.pt",
        "google-t5/t5-11b/config.json",
        "google-t5/t5-11b/model.safetensors",  # not pytorch_model.bin as well: 45 GB saved
        "google-t5/t5-11b/spiece.model",
        "google-t5/t5-11b/tokenizer.json",
    ]
    assert "all files present" in out and "model=7b_text2world" in out
    assert err == ""


def test_video2world_only_has_no_text2world_hint(tmp_path):
    code, out, _ = run_main(["--kind", "Video2World", "--checkpoint-dir", str(tmp_path)], FakeHub())
    assert code == 0
    assert (tmp_path / "Cosmos-Predict1-7B-Video2World" / "model.pt").is_file()
    assert "model=" not in out


def test_complete_folders_are_skipped_without_the_hub(tmp_path):
    run_main(["--model", "7B,14B", "--checkpoint-dir", str(tmp_path)], FakeHub())
    again = FakeHub()
    code, out, _ = run_main(["--model", "7B,14B", "--checkpoint-dir", str(tmp_path)], again)
    assert code == 0
    assert again.calls == [] and again.list_calls == []
    assert out.count("skipped: already complete") == 4


def test_only_incomplete_folders_are_fetched(tmp_path):
    run_main(["--checkpoint-dir", str(tmp_path)], FakeHub())
    (tmp_path / "Cosmos-Tokenize1-CV8x8x8-720p" / "decoder.jit").write_bytes(b"")  # truncated
    (tmp_path / "Cosmos-Predict1-7B-Text2World" / "README.md").unlink()  # optional: not a reason to fetch
    again = FakeHub()
    code, _, _ = run_main(["--checkpoint-dir", str(tmp_path)], again)
    assert code == 0
    assert [c["repo_id"] for c in again.calls] == ["nvidia/Cosmos-Tokenize1-CV8x8x8-720p"]
    assert (tmp_path / "Cosmos-Tokenize1-CV8x8x8-720p" / "decoder.jit").stat().st_size > 0


def test_force_fetches_again(tmp_path):
    run_main(["--checkpoint-dir", str(tmp_path)], FakeHub())
    again = FakeHub()
    code, _, _ = run_main(["--checkpoint-dir", str(tmp_path), "--force"], again)
    assert code == 0
    assert len(again.calls) == 3 and all(c["force_download"] for c in again.calls)


def test_existing_pytorch_model_bin_counts_as_complete(tmp_path):
    """A T5 folder from the reference's own download script (pytorch_model.bin) is not fetched again."""
    d = tmp_path / "google-t5" / "t5-11b"
    d.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "pytorch_model.bin"):
        (d / name).write_bytes(b"x")
    hub = FakeHub()
    code, _, _ = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert code == 0
    assert "google-t5/t5-11b" not in [c["repo_id"] for c in hub.calls]
    assert not (d / "model.safetensors").exists()


def test_verification_names_missing_files(tmp_path):
    hub = FakeHub(drop={"model.pt", "mean_std.pt"})
    code, out, err = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert code == 1
    assert "nvidia/Cosmos-Predict1-7B-Text2World: still missing after the download: model.pt" in err
    assert "nvidia/Cosmos-Tokenize1-CV8x8x8-720p: still missing after the download: mean_std.pt" in err
    assert "run again to resume" in err
    assert f"{tmp_path / 'Cosmos-Predict1-7B-Text2World'}: FAILED, missing model.pt" in out
    assert f"{tmp_path / 'google-t5' / 't5-11b'}: fetched" in out
    assert "2 of 3 repositories are incomplete" in err


def test_optional_files_absent_is_only_a_note(tmp_path):
    repos = dict(REPOS)
    repos["nvidia/Cosmos-Predict1-7B-Text2World"] = ["model.pt"]
    code, out, _ = run_main(["--checkpoint-dir", str(tmp_path)], FakeHub(repos=repos))
    assert code == 0
    assert "(not present, not needed: README.md, config.json)" in out


def test_t5_repo_without_pytorch_weights(tmp_path):
    repos = dict(REPOS)
    repos["google-t5/t5-11b"] = ["config.json", "tokenizer.json", "tf_model.h5"]
    code, _, err = run_main(["--checkpoint-dir", str(tmp_path)], FakeHub(repos=repos))
    assert code == 1
    assert "google-t5/t5-11b: the repository has no PyTorch weights" in err


# ---- dry run --------------------------------------------------------------------------------------------
def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not even needed for a dry run
    (tmp_path / "Cosmos-Predict1-7B-Text2World").mkdir()
    (tmp_path / "Cosmos-Predict1-7B-Text2World" / "model.pt").write_bytes(b"x")
    code, out, err = run_main(["--model", "7B,14B", "--dry-run", "--checkpoint-dir", str(tmp_path / "")])
    assert code == 0 and err == ""
    for repo, sub in [
        ("nvidia/Cosmos-Predict1-7B-Text2World", "Cosmos-Predict1-7B-Text2World"),
        ("nvidia/Cosmos-Predict1-14B-Text2World", "Cosmos-Predict1-14B-Text2World"),
        ("nvidia/Cosmos-Tokenize1-CV8x8x8-720p", "Cosmos-Tokenize1-CV8x8x8-720p"),
        ("google-t5/t5-11b", "google-t5/t5-11b"),
    ]:
        assert f"{repo} -> {tmp_path / sub}" in out
    assert "complete: skip (use --force to fetch again)" in out  # the 7B model.pt
    assert "would fetch; missing model.pt" in out  # the 14B
    assert "nothing is downloaded" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Cosmos-Predict1-7B-Text2World"]


def test_dry_run_as_a_script():
    proc = subprocess.run([sys.executable, str(TOOL), "--dry-run", "--kind", "Video2World"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "nvidia/Cosmos-Predict1-7B-Video2World -> checkpoints/Cosmos-Predict1-7B-Video2World" in proc.stdout
    proc = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--checkpoint-dir" in proc.stdout and "--dry-run" in proc.stdout


# ---- errors ---------------------------------------------------------------------------------------------
def test_huggingface_hub_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    code, out, err = run_main(["--checkpoint-dir", str(tmp_path)])
    assert code == 2
    assert 'pip install -e ".[download]"' in err and "huggingface_hub is not installed" in err
    assert "Traceback" not in err


def _hub_error(name: str, message: str, status: int):
    errors = pytest.importorskip("huggingface_hub.errors")
    cls = getattr(errors, name)
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    try:
        return cls(message, response=response)
    except TypeError:  # another huggingface_hub generation: build it without its constructor
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        exc.response = response
        return exc


def test_gated_repo_tells_to_accept_the_license_and_pass_a_token(tmp_path):
    hub = FakeHub(error=_hub_error("GatedRepoError", "Access to model nvidia/... is restricted.", 401))
    code, _, err = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert code == 1
    assert "nvidia/Cosmos-Predict1-7B-Text2World is gated" in err
    assert "accept the license on https://huggingface.co/nvidia/Cosmos-Predict1-7B-Text2World" in err
    assert "--token" in err and "HF_TOKEN" in err
    assert len(hub.calls) == 3  # not a network problem: the other repositories are still tried


def test_gated_repo_with_a_token_says_the_token_lacks_access(tmp_path):
    hub = FakeHub(error=_hub_error("GatedRepoError", "restricted", 403))
    _, _, err = run_main(["--checkpoint-dir", str(tmp_path), "--token", "hf_wrong"], hub)
    assert "the token you passed does not grant access" in err
    assert "hf_wrong" not in err  # never print the token


def test_401_repository_not_found(tmp_path):
    hub = FakeHub(error=_hub_error("RepositoryNotFoundError", "401 Client Error", 401))
    code, _, err = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert code == 1
    assert "was not found or needs authentication (HTTP 401)" in err
    assert "accept the license" in err and "--token" in err


def test_plain_http_401_is_an_auth_error(tmp_path):
    hub = FakeHub(error=_hub_error("HfHubHTTPError", "401 Unauthorized", 401))
    _, _, err = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert "the hub refused access to nvidia/Cosmos-Predict1-7B-Text2World (HTTP 401): check the token" in err
    assert "accept the license on https://huggingface.co/nvidia/Cosmos-Predict1-7B-Text2World" in err


def test_no_network_says_so_and_stops(tmp_path):
    errors = pytest.importorskip("huggingface_hub.errors")
    exc = errors.LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub ...")
    exc.__cause__ = ConnectionError("[Errno -2] Name or service not known")
    hub = FakeHub(error=exc)
    code, out, err = run_main(["--model", "7B,14B", "--checkpoint-dir", str(tmp_path)], hub)
    assert code == 1
    assert "cannot reach https://huggingface.co" in err and "no network" in err
    assert len(hub.calls) == 1  # the same for every repository: not tried three more times
    assert err.count("cannot reach") == 1
    assert "4 of 4 repositories are incomplete" in err
    assert out.count("FAILED") == 4


def test_connection_error_class_by_name(tmp_path):
    class ConnectError(Exception):  # httpx's name; no import of httpx needed to recognise it
        pass

    hub = FakeHub(list_error=ConnectError("connection refused"))
    t5 = _t5(tmp_path)
    result = dl.fetch_target(t5, hub.hub(), token=None)
    assert result.status == "failed" and result.error_kind == "network"
    assert "cannot reach" in result.message and "ConnectError: connection refused" in result.message


def test_offline_mode(tmp_path, monkeypatch):
    errors = pytest.importorskip("huggingface_hub.errors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = FakeHub(error=errors.LocalEntryNotFoundError("outgoing traffic has been disabled"))
    _, _, err = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert "offline mode is on (HF_HUB_OFFLINE is set)" in err


def test_server_error(tmp_path):
    hub = FakeHub(error=_hub_error("HfHubHTTPError", "503 Service Unavailable", 503))
    _, _, err = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert "the hub answered HTTP 503" in err and "try again later" in err


def test_disk_full(tmp_path):
    import errno

    hub = FakeHub(error=OSError(errno.ENOSPC, "No space left on device"))
    _, _, err = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert "no space left on the device holding" in err


def test_other_errors_keep_type_and_message(tmp_path):
    hub = FakeHub(error=RuntimeError("something odd"))
    code, _, err = run_main(["--checkpoint-dir", str(tmp_path)], hub)
    assert code == 1 and "fetching nvidia/Cosmos-Predict1-7B-Text2World failed: RuntimeError: something odd" in err


def test_real_huggingface_hub_wiring(tmp_path, monkeypatch):
    """Without an injected Hub the tool calls huggingface_hub.snapshot_download and HfApi.list_repo_files."""
    hf = pytest.importorskip("huggingface_hub")
    fake = FakeHub()
    monkeypatch.setattr(hf, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(hf.HfApi, "list_repo_files", lambda self, repo_id, token=None, **kw: fake.list_repo_files(repo_id))
    from huggingface_hub.hf_api import RepoFile

    def tree(self, repo_id, recursive=False, token=None, **kw):  # the hub's JSON, parsed by huggingface_hub
        assert recursive
        return [RepoFile(path=name, size=8, oid="0" * 40, lfs={"size": 8, "oid": f"{i:064x}", "pointerSize": 130})
                for i, name in enumerate(fake.repos[repo_id])]

    monkeypatch.setattr(hf.HfApi, "list_repo_tree", tree)
    code, _, err = run_main(["--checkpoint-dir", str(tmp_path)])
    assert code == 0, err
    assert len(fake.calls) == 3 and fake.list_calls == ["google-t5/t5-11b"]
    assert (tmp_path / "google-t5" / "t5-11b" / "model.safetensors").is_file()
    record = json.loads((tmp_path / "Cosmos-Predict1-7B-Text2World" / "hub-sha256.json").read_text())
    assert record["files"]["model.pt"] == {"sha256": f"{2:064x}", "size": 8,
                                           "repo_id": "nvidia/Cosmos-Predict1-7B-Text2World"}


class HashingHub(FakeHub):
    """Serves a real tiny checkpoint as model.pt and publishes the SHA-256 of what it serves (LFS metadata)."""

    def __init__(self, model_bytes: bytes):
        super().__init__()
        self.model_bytes = model_bytes

    def snapshot_download(self, repo_id, *, local_dir, **kw):
        super().snapshot_download(repo_id, local_dir=local_dir, **kw)
        if (Path(local_dir) / "model.pt").is_file():
            (Path(local_dir) / "model.pt").write_bytes(self.model_bytes)
        return local_dir

    def lfs_hashes(self, repo_id, token=None):
        import hashlib

        return {"model.pt": (hashlib.sha256(self.model_bytes).hexdigest(), len(self.model_bytes))}

    def hub(self):
        return dl.Hub(snapshot_download=self.snapshot_download, list_repo_files=self.list_repo_files,
                      lfs_hashes=self.lfs_hashes)


def test_download_records_the_hub_sha256_and_inspect_verifies_it(tmp_path, capsys):
    from cosmos_dist.checkpoint import write_random_checkpoint
    from cosmos_dist.commands import run_command
    from cosmos_dist.models import get_preset

    src = tmp_path / "src.pt"
    write_random_checkpoint(src, get_preset("tiny_text2world"))
    code, out, err = run_main(["--checkpoint-dir", str(tmp_path / "ck")], HashingHub(src.read_bytes()))
    assert code == 0, err
    assert "hub SHA-256 of 1 file(s) recorded in hub-sha256.json" in out
    model = tmp_path / "ck" / "Cosmos-Predict1-7B-Text2World" / "model.pt"
    capsys.readouterr()
    assert run_command("inspect_checkpoint", [str(model), "--verify"]) == 0
    assert "matches the hub's published hash for nvidia/Cosmos-Predict1-7B-Text2World:model.pt" in capsys.readouterr().out
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern inside the tensor data: still loads, wrong weights
    model.write_bytes(bytes(data))
    assert run_command("inspect_checkpoint", [str(model), "--verify"]) == 1
    assert "does not match the hub's" in capsys.readouterr().err
    (model.parent / "hub-sha256.json").unlink()
    assert run_command("inspect_checkpoint", [str(model), "--verify"]) == 2
    assert "no published SHA-256 is recorded" in capsys.readouterr().err
