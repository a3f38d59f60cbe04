"""Reading weights once (``lit_align/models/loading.py``) gives ``from_pretrained``'s model exactly, for every verified
family: read whole (one process, DDP), read unit by unit as FSDP1 reaches each module (``UnitLoader``), tied
embeddings kept tied. (FSDP2's shard-by-shard reading is checked in ``tests/test_distributed.py`` and
``tests/test_load_memory.py``.) The frozen-copy reference is built the same way, never copied from the policy."""

from __future__ import annotations

import copy
from collections import deque
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from lit_align.models.loading import UnitLoader, empty_base, empty_causal_lm, load_base, weight_files
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from tests.families import FAMILIES, build_family, family_batch


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    """A tiny model of each family (tied embeddings where the family ties them) in a save_pretrained directory,
    and what ``from_pretrained`` makes of it."""
    directory = tmp_path_factory.mktemp(request.param)
    build_family(request.param).save_pretrained(directory)
    return request.param, str(directory), AutoModelForCausalLM.from_pretrained(directory).eval()


MAY_RENAME = {"gpt_neox", "beam", "cohere2_moe", "granitemoe", "granitemoehybrid", "granitemoeshared", "mixtral"}
"""The families whose saved weight names may differ from the model's (GPT-NeoX's head as ``embed_out``; the
mixture-of-experts families' fused experts saved per expert), read with ``from_pretrained``; every other family
is read weight by weight."""


def renamed_on_save(path: str) -> bool:
    """Whether ``save_pretrained`` wrote a weight under another name than the model's (recent transformers 5
    releases write GPT-NeoX's ``lm_head`` as ``embed_out``): ``from_pretrained`` maps it back, so such a directory
    loads through it."""
    model = empty_causal_lm(PolicySpec(path=path))
    files = weight_files(path)
    return any(name not in files for name, _ in model.named_parameters())


def assert_same_model(model: PreTrainedModel, expected: PreTrainedModel) -> None:
    state, reference = model.state_dict(), expected.state_dict()
    assert state.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(state[name], value), name
    tied = expected.get_output_embeddings().weight is expected.get_input_embeddings().weight
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    batch = family_batch()
    with torch.no_grad():
        logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(logits, expected(input_ids=batch["input_ids"],
                                                    attention_mask=batch["attention_mask"]).logits, atol=0, rtol=0)


def test_read_whole_equals_from_pretrained(saved):
    family, path, expected = saved
    spec = PolicySpec(path=path)
    assert not renamed_on_save(path) or family in MAY_RENAME
    assert (empty_base(spec) is None) == renamed_on_save(path)  # else read weight by weight
    assert_same_model(load_base(spec), expected)


def test_read_unit_by_unit_equals_from_pretrained(saved):
    """As FSDP1 materialises an empty model: each module handed to the loader in turn (breadth first), the LM head
    first when it is an ignored module (``wrap_frozen_fsdp1``)."""
    family, path, expected = saved
    model = load_base(PolicySpec(path=path), empty=True)
    empty = [parameter.is_meta for parameter in model.parameters()]
    assert all(empty) if not renamed_on_save(path) else not any(empty)  # (loaded: the loader has nothing to do)
    load = UnitLoader(model)
    load(model.get_output_embeddings())
    modules = deque([model])
    while modules:
        module = modules.popleft()
        load(module)
        modules.extend(module.children())
    assert_same_model(model, expected)


def test_reference_is_read_not_copied(saved, monkeypatch):
    _, path, expected = saved
    deepcopy = copy.deepcopy

    def no_model_copies(value, *args):
        assert not isinstance(value, torch.nn.Module), "the reference was deep-copied"
        return deepcopy(value, *args)

    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    module = AlignmentModule(FDPO(), PolicySpec(path=path))
    module.configure_model()
    assert_same_model(module.reference.model, expected)
    assert not any(parameter.requires_grad for parameter in module.reference.model.parameters())
    policy = dict(module.policy.named_parameters())
    for name, parameter in module.reference.model.named_parameters():
        assert parameter.data_ptr() != policy[name].data_ptr()  # a model of its own


def test_from_pretrained_arguments_are_left_to_it(tmp_path):
    """``extra`` arguments that a model built from its config cannot take load through ``from_pretrained``."""
    build_family("llama").save_pretrained(tmp_path)
    assert empty_base(PolicySpec(path=str(tmp_path), extra={"attn_implementation": "eager"})) is not None
    assert empty_base(PolicySpec(path=str(tmp_path), extra={"revision": "main"})) is None


def _fill_shards(rank: int, world_size: int, port: int, file: str, placements: list) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import distribute_tensor, empty, init_device_mesh

    from lit_align.models.loading import _fill

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        mesh = init_device_mesh("cpu", (world_size,))
        whole = torch.arange(35, dtype=torch.float32).reshape(5, 7)  # uneven on 2 processes in each dimension
        for placement in placements:
            parameter = empty(5, 7, device_mesh=mesh, placements=[placement])
            _fill(parameter, Path(file), "weight")
            expected = distribute_tensor(whole, mesh, [placement]).to_local()
            assert torch.equal(parameter.to_local(), expected), (rank, placement)
    finally:
        dist.destroy_process_group()


def test_a_dtensor_shard_reads_its_own_block(tmp_path):
    """``_fill`` reads each process's block of a weight from its offset (DTensor's chunk protocol, the public way
    to ask a DTensor where its shard lies), for rows and columns sharded unevenly over two processes."""
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import save_file
    from torch.distributed.tensor import Replicate, Shard

    save_file({"weight": torch.arange(35, dtype=torch.float32).reshape(5, 7)}, tmp_path / "w.safetensors")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_fill_shards, args=(2, port, str(tmp_path / "w.safetensors"), [Shard(0), Shard(1), Replicate()]),
             nprocs=2, join=True)
