"""Goldens: record -> promote -> verify, keyed by device class, corrupt files exit 2, no Diffusers in verify.

Goldens here are recorded into temporary roots from flux-tiny's reference (one reference run per module), so
these tests do not depend on the committed goldens (cases/test_registered_cases.py checks those).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.cli.main import main
from harness.golden.errors import GoldenCorrupt, GoldenError, GoldenMissing
from harness.golden.file_format import SCHEMA_VERSION, golden_bytes, read_golden, write_golden
from harness.golden.model import golden_from_trace
from harness.golden.record import largest_change, promote_golden, record_golden
from harness.golden.store import golden_path, parse_golden_name, scan_goldens
from harness.golden.verify import verify_golden
from harness.run.cases import get_case
from harness.run.parity import run_parity
from harness.trace.keys import RecordKey
from harness.trace.memory import Trace
from harness.verdicts.faults import get_fault

ROOT = Path(__file__).resolve().parent.parent
CASE = "flux-tiny"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, tiny_flux: Path) -> Path:
    """A golden root holding flux-tiny's fp32 golden (recorded and promoted here) and nothing else."""
    root = tmp_path_factory.mktemp("golden")
    record_golden(get_case(CASE), "fp32", "cpu", root)
    promote_golden(CASE, "fp32", "cpu", root)
    return root


@pytest.fixture()
def root(recorded: Path, tmp_path: Path) -> Path:
    """A private copy of the recorded root that a test may change."""
    target = tmp_path / "golden"
    shutil.copytree(recorded, target)
    return target


def golden_file(root: Path) -> Path:
    return golden_path(CASE, "fp32", "cpu", root)


def test_record_writes_a_draft_and_promote_refuses_to_overwrite(root: Path, capsys: pytest.CaptureFixture) -> None:
    assert not golden_path(CASE, "fp32", "cpu", root, "draft").exists()  # promoted: the draft became the golden
    before = golden_file(root).read_bytes()
    assert main(["golden", "record", CASE, "--golden-dir", str(root)]) == 0
    assert golden_file(root).read_bytes() == before  # record never touches the golden
    assert main(["golden", "promote", CASE, "--golden-dir", str(root)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["golden", "promote", CASE, "--golden-dir", str(root), "--force"]) == 0
    out = capsys.readouterr().out
    # the reference is deterministic on the CPU: the new recording is the old one, bit for bit
    assert "golden replaced" in out and "every record identical to the golden it replaces" in out
    assert not golden_path(CASE, "fp32", "cpu", root, "draft").exists()
    assert main(["golden", "promote", CASE, "--golden-dir", str(root)]) == 2  # nothing left to promote


def test_golden_holds_floors_environment_command_and_whole_records(recorded: Path) -> None:
    golden = read_golden(golden_file(recorded))
    info = golden.info
    assert (info["case"], info["family"], info["dtype"], info["device_class"]) == (CASE, "flux", "fp32", "cpu")
    assert info["request"] == get_case(CASE).request().to_dict()
    assert info["tolerances"]["source"] == "golden/tolerances/flux-tiny.fp32.cpu.json"
    assert info["command"].startswith("diffparity golden record flux-tiny")
    for name in ("torch", "cuda", "diffusers", "dtype", "attention_backend", "tf32_matmul", "device"):
        assert name in info["environment"]
    assert not golden.compact and all(record.full for record in golden.records.values())
    assert golden_file(recorded).stat().st_size < 300_000  # 64x64, 4 steps: about 140 KB
    stages = {key.stage for key in golden.records}
    assert stages == {"encode", "timesteps", "latents", "denoise", "decode"}


def test_verify_reproduces_the_parity_run_exactly(recorded: Path) -> None:
    """The golden is the reference trace: verify's numbers are the parity run's, record for record."""
    case = get_case(CASE)
    verified = verify_golden(case, "fp32", "cpu", recorded)
    ran = run_parity(case, case.request())
    assert verified.passed and ran.passed
    assert verified.report["forcing"] and verified.comparison.forced_records

    def table(records) -> dict:
        return {(r.mode, r.stage, r.field, r.step): r.metrics["rel_l2"] for r in records}

    assert table(verified.comparison.all_records()) == table(ran.comparison.all_records())


@pytest.mark.parametrize("fault", ["text_encoder_wrong_hidden_state", "sigma_shift_not_applied",
                                   "initial_noise_generator_order", "rotary_style_swapped",
                                   "last_denoising_step_skipped", "decode_scale_shift_wrong"])
def test_verify_fails_on_a_broken_native_side_where_it_breaks(root: Path, fault: str) -> None:
    case = get_case(CASE)
    broken = get_fault(fault)
    result = verify_golden(case, "fp32", "cpu", root, mutate=broken.apply)
    assert not result.passed and result.report["verdict"] == "fail"
    first = result.comparison.first_divergence
    stage, field, step = broken.expected_for(case.request())
    assert (first.stage, first.step) == (stage, step)
    assert field is None or first.field == field
    # the failing native trace is kept beside the golden, then removed by the next passing verify
    obtained = golden_path(CASE, "fp32", "cpu", root, "obtained")
    assert result.obtained == obtained and obtained.is_file()
    assert verify_golden(case, "fp32", "cpu", root).passed
    assert not obtained.exists()


def test_verify_exit_codes_and_report(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["golden", "verify", CASE, "--golden-dir", str(root), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"] == "pass" and report["golden"]["sha256"] == read_golden(golden_file(root)).sha256
    capsys.readouterr()
    assert main(["golden", "verify", CASE, "--golden-dir", str(root), "--dtype", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no golden for flux-tiny bf16 on device class cpu" in err
    assert "goldens for fp32 on cpu" in err


def test_corrupt_golden_is_exit_2_not_a_parity_failure(root: Path, capsys: pytest.CaptureFixture) -> None:
    path = golden_file(root)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of the last record (decode/image)
    path.write_bytes(bytes(data))
    assert main(["golden", "verify", CASE, "--golden-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is corrupt" in err and "sha256" in err


def _positions(size: int, header_end: int) -> list[int]:
    """Byte positions spread over the length prefix, the header (metadata, hash, record entries), the data."""
    header = list(range(0, header_end, max(1, header_end // 40)))
    data = list(range(header_end, size, max(1, (size - header_end) // 40)))
    return sorted({0, 3, 7, 8, header_end - 1, size - 1, *header, *data})


def test_every_edited_byte_reads_as_corrupt(recorded: Path, tmp_path: Path) -> None:
    data = golden_file(recorded).read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    target = tmp_path / CASE / "fp32.cpu.safetensors"
    target.parent.mkdir()
    for position in _positions(len(data), header_end):
        for flip in (0x01, 0x80):
            edited = bytearray(data)
            edited[position] ^= flip
            target.write_bytes(bytes(edited))
            with pytest.raises(GoldenError) as raised:
                read_golden(target)
            assert isinstance(raised.value, GoldenCorrupt), (position, str(raised.value))


@pytest.mark.parametrize("content", [
    b"", b"\x80\x04\x95garbage", b"PK\x03\x04zip", b"\x01\x02", (10**9).to_bytes(8, "little") + b"{}",
    (2).to_bytes(8, "little") + b"[]", (4).to_bytes(8, "little") + b"{}  ", (9).to_bytes(8, "little") + b"not json!",
    (10**5 * 2).to_bytes(8, "little") + b"[" * 10**5 + b"]" * 10**5,
], ids=["empty", "pickle", "zip", "short", "huge-header", "json-array", "no-metadata", "not-json", "deep-json"])
def test_hostile_files_are_one_line_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "g.safetensors"
    path.write_bytes(content)
    with pytest.raises(GoldenCorrupt) as raised:
        read_golden(path)
    assert "\n" not in str(raised.value)


def _rehashed(golden_document_edit, recorded: Path, tmp_path: Path) -> Path:
    """A golden whose JSON document is edited and whose hash is then recomputed: a well-hashed hostile file."""
    golden = read_golden(golden_file(recorded))
    golden_document_edit(golden)
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(golden_bytes(golden)[0])
    return path


@pytest.mark.parametrize("edit", [
    lambda g: g.info.update(request={**g.info["request"], "steps": -1}),
    lambda g: g.info.update(request={**g.info["request"], "prompt": 7}),
    lambda g: g.info.update(request={**g.info["request"], "surprise": 1}),
    lambda g: g.info.update(checkpoint={}),
    lambda g: g.info.update(tolerances={"source": "x", "dtype": "fp32", "records": [{"stage": "encode"}]}),
    lambda g: g.info.pop("environment"),
    lambda g: g.records.update({RecordKey("decode", "image"): replace(
        g.records[RecordKey("decode", "image")], sha256="0" * 64)}),
], ids=["negative-steps", "prompt-int", "unknown-field", "no-digest", "bad-floors", "no-environment",
        "record-hash"])
def test_well_hashed_but_malformed_golden_is_corrupt(recorded: Path, tmp_path: Path, edit) -> None:
    with pytest.raises(GoldenCorrupt):
        read_golden(_rehashed(edit, recorded, tmp_path))


def _crafted_header(edit, recorded: Path, tmp_path: Path) -> Path:
    """The golden with its raw header edited (tensor entries, metadata) and the file hash recomputed as the
    writer does: hostile structure behind a valid hash."""
    data = golden_file(recorded).read_bytes()
    end = 8 + int.from_bytes(data[:8], "little")
    header = json.loads(data[8:end])
    document = json.loads(header["__metadata__"]["golden"])
    edit(header, document)
    header["__metadata__"]["golden"] = json.dumps(document, sort_keys=True)
    header["__metadata__"]["golden_sha256"] = "0" * 64
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    body = len(raw).to_bytes(8, "little") + raw + data[end:]
    digest = hashlib.sha256(body).hexdigest()
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(body.replace(b'"golden_sha256":"' + b"0" * 64, b'"golden_sha256":"' + digest.encode()))
    return path


IMAGE = "decode/image"


@pytest.mark.parametrize("edit", [
    lambda h, d: h[IMAGE].update(dtype=["F32"]),
    lambda h, d: h[IMAGE].update(dtype="F99"),
    lambda h, d: h[IMAGE].update(shape=[10**40]),
    lambda h, d: d["records"][IMAGE].update(shape=[10**400], kind="summary", stride=1),
    lambda h, d: d["records"][IMAGE].update(kind="summary", stride=0),
    lambda h, d: d["records"][IMAGE].update(kind="partial"),
    lambda h, d: h[IMAGE].update(data_offsets=[0, h[IMAGE]["data_offsets"][1] - h[IMAGE]["data_offsets"][0]]),
    lambda h, d: h.update({"not/a/record/name": h.pop(IMAGE)}),
    lambda h, d: d["tolerances"]["records"][0].update(threshold=1e999),
    lambda h, d: d["tolerances"]["records"][0].update(threshold=True),
    lambda h, d: d["records"][IMAGE]["stats"].update(mean=[1]),
    lambda h, d: d.update(compact="no"),
], ids=["dtype-list", "dtype-unknown", "shape-huge", "summary-shape-astronomic", "stride-zero", "kind-unknown",
        "overlapping", "bad-name", "threshold-inf", "threshold-bool", "stats-list", "compact-str"])
def test_well_hashed_hostile_structure_is_corrupt(recorded: Path, tmp_path: Path, edit) -> None:
    with pytest.raises(GoldenCorrupt) as raised:
        read_golden(_crafted_header(edit, recorded, tmp_path))
    assert "\n" not in str(raised.value)


def test_crafting_helper_round_trips(recorded: Path, tmp_path: Path) -> None:
    """The hostile-structure test above would prove nothing if its unedited file did not read."""
    assert read_golden(_crafted_header(lambda h, d: None, recorded, tmp_path)).records


def test_other_schema_and_trace_files_are_refused(recorded: Path, tmp_path: Path) -> None:
    trace = Trace({"case": CASE})
    trace.record("latents", "initial", torch.zeros(2))
    trace.save(tmp_path / "trace.safetensors")
    with pytest.raises(GoldenError, match="is a diffparity trace, not a golden"):
        read_golden(tmp_path / "trace.safetensors")
    data = golden_file(recorded).read_bytes().replace(
        f'"schema_version":"{SCHEMA_VERSION}"'.encode(), b'"schema_version":"9"')
    (tmp_path / "v9.safetensors").write_bytes(data)
    with pytest.raises(GoldenError, match="golden schema version '9'"):
        read_golden(tmp_path / "v9.safetensors")
    with pytest.raises(GoldenMissing):
        read_golden(tmp_path / "absent.safetensors")
    with pytest.raises(GoldenCorrupt, match="not a file"):
        read_golden(tmp_path)


def test_a_golden_of_another_device_class_is_never_used(root: Path, capsys: pytest.CaptureFixture) -> None:
    """An H100 golden (cuda-sm90) next to no CPU golden: verify on the CPU refuses, naming what exists."""
    cuda = golden_path(CASE, "fp32", "cuda-sm90", root)
    golden_file(root).rename(cuda)
    assert main(["golden", "verify", CASE, "--golden-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert "no golden for flux-tiny fp32 on device class cpu" in err and "fp32 on cuda-sm90" in err
    # a file renamed into the CPU slot still says where it was recorded: refused, not used
    shutil.copy(cuda, golden_file(root))
    info_golden = read_golden(golden_file(root))
    info_golden.info["device_class"] = "cuda-sm90"
    write_golden(info_golden, golden_file(root))
    with pytest.raises(GoldenError, match="for case flux-tiny fp32 on cuda-sm90, not for flux-tiny fp32 on cpu"):
        verify_golden(get_case(CASE), "fp32", "cpu", root)


def test_a_golden_of_another_checkpoint_is_refused(root: Path, tiny_flux_copy: Path) -> None:
    weights = tiny_flux_copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(GoldenError, match="recorded from another checkpoint.*vae/"):
        verify_golden(get_case(CASE), "fp32", "cpu", root, checkpoint=tiny_flux_copy)


def test_compact_golden_samples_large_records_and_still_catches_faults(recorded: Path, tmp_path: Path) -> None:
    """A large case's golden keeps statistics, a strided sample and the sha256 of each large record."""
    full = read_golden(golden_file(recorded))
    trace = full.reference_trace()
    compact = golden_from_trace(trace, {k: v for k, v in full.info.items() if k != "compact"}, full_limit=10_000,
                                small_limit=1024, sample_elements=256)
    path = golden_path(CASE, "fp32", "cpu", tmp_path)
    write_golden(compact, path)
    assert path.stat().st_size < golden_file(recorded).stat().st_size / 2
    read = read_golden(path)
    image = read.records[RecordKey("decode", "image")]
    assert read.compact and not image.full and image.stride == math.ceil(3 * 64 * 64 / 256)
    assert image.sample.numel() == math.ceil(image.numel / image.stride)
    assert image.stats["std"] == pytest.approx(float(trace[RecordKey("decode", "image")].double().std(False)))
    assert read.records[RecordKey("timesteps", "sigmas")].full  # small records stay whole
    case = get_case(CASE)
    result = verify_golden(case, "fp32", "cpu", tmp_path)
    assert result.passed and "compact golden" in result.report["forcing_skipped"]
    assert result.report["golden"]["sampled_records"] > 0
    broken = verify_golden(case, "fp32", "cpu", tmp_path, mutate=get_fault("rotary_style_swapped").apply,
                           write_obtained=False)
    assert not broken.passed and broken.comparison.first_divergence.key() == RecordKey("denoise",
                                                                                        "transformer_output", 0)
    assert largest_change(full, read)[1] == 0.0  # samples of the same tensors


def test_names_and_unused_goldens(root: Path, capsys: pytest.CaptureFixture) -> None:
    parsed = parse_golden_name(root / CASE / "bf16.cuda-sm90.draft.safetensors")
    assert (parsed.case, parsed.dtype, parsed.device_class, parsed.kind) == (CASE, "bf16", "cuda-sm90", "draft")
    assert parse_golden_name(root / CASE / "notes.txt") is None
    shutil.copytree(root / CASE, root / "removed-case")
    (root / CASE / "notes.txt").write_text("x")
    found, strays = scan_goldens(root)
    assert {f.case for f in found} == {CASE, "removed-case"} and strays == [root / CASE / "notes.txt"]
    assert main(["golden", "list", "--golden-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "removed-case" in out and out.count("UNUSED") == 2
    with pytest.raises(GoldenError, match="cannot name a golden file"):
        golden_path("../escape", "fp32", "cpu", root)


def test_verify_imports_no_diffusers(recorded: Path, tiny_flux: Path) -> None:
    """`diffparity golden verify` runs the native side only: Diffusers is never even imported."""
    code = ("import sys\nfrom harness.cli.main import main\n"
            f"code = main(['golden', 'verify', 'flux-tiny', '--golden-dir', {str(recorded)!r}])\n"
            "print('EXIT', code, 'DIFFUSERS', sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers'))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "EXIT 0 DIFFUSERS []", proc.stdout + proc.stderr


def test_regenerate_flag_writes_a_draft_and_still_fails(recorded: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """DIFFPARITY_GOLDEN_REGEN=1 records a fresh draft beside the golden, and the test fails until promoted."""
    spec = importlib.util.spec_from_file_location("registered_cases", ROOT / "cases" / "test_registered_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = tmp_path / "golden"
    shutil.copytree(recorded, root)
    monkeypatch.setenv("DIFFPARITY_GOLDEN_DIR", str(root))
    before = golden_file(root).read_bytes()
    monkeypatch.setenv(module.REGEN_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="DIFFPARITY_GOLDEN_REGEN: draft written to"):
        module.test_registered_case_matches_its_golden("flux", CASE, "fp32", "cpu")
    assert golden_path(CASE, "fp32", "cpu", root, "draft").is_file() and golden_file(root).read_bytes() == before
    monkeypatch.delenv(module.REGEN_ENV)
    module.test_registered_case_matches_its_golden("flux", CASE, "fp32", "cpu")  # the golden itself still passes
    golden_file(root).unlink()
    with pytest.raises(pytest.fail.Exception, match="no golden for flux-tiny fp32 on device class cpu"):
        module.test_registered_case_matches_its_golden("flux", CASE, "fp32", "cpu")  # missing on the CPU: fails


def test_largest_change_names_the_record_that_moved(recorded: Path) -> None:
    old = read_golden(golden_file(recorded))
    new = read_golden(golden_file(recorded))
    key = RecordKey("denoise", "latents", 2)
    record = new.records[key]
    new.records[key] = replace(record, tensor=record.tensor * 1.01)
    name, change = largest_change(old, new)
    assert name == "denoise/latents/2" and change == pytest.approx(0.01, rel=1e-6)
    del new.records[RecordKey("decode", "image")]
    assert largest_change(new, old) == ("decode/image", math.inf)  # a record the old golden lacked
