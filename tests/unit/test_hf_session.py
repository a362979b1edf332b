"""The transformers model session on an in-process random-weight Llama: cache growth, crop, reorder, fork."""

import pytest
import torch

import anydecode.plugins.hf as hf
from anydecode import RuntimeAdapterError
from anydecode.plugins.hf import HFSession
from tests.helpers.tiny import tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_block_append_gives_logits_at_every_position_in_one_pass(model):
    session = HFSession(model, [2])
    first = session.start(torch.tensor([[1, 5, 9]]))
    block = session.append([[11, 12, 13]])
    ref = full_logits(model, [1, 5, 9, 11, 12, 13])
    assert session.forward_passes == 2
    assert torch.allclose(first[0], ref[2], atol=1e-4)
    assert torch.allclose(block[0], ref[3:], atol=1e-4)


def test_truncate_rolls_back_exactly(model):
    session = HFSession(model, [2])
    session.start(torch.tensor([[1, 5, 9]]))
    session.append([[11, 12, 13]])
    session.truncate(4)
    assert session.tokens() == [1, 5, 9, 11]
    after = session.append([[40]])
    assert torch.allclose(after[0, -1], full_logits(model, [1, 5, 9, 11, 40])[-1], atol=1e-4)
    with pytest.raises(RuntimeAdapterError, match="cannot truncate to 9"):
        session.truncate(9)


def test_select_reorders_and_duplicates_rows(model):
    session = HFSession(model, [2])
    session.start(torch.tensor([[1, 5, 9], [1, 7, 3]]))
    session.select([1, 1, 0])
    out = session.append([[20], [21], [22]])
    assert session.tokens(0) == [1, 7, 3, 20] and session.tokens(2) == [1, 5, 9, 22]
    assert torch.allclose(out[1, -1], full_logits(model, [1, 7, 3, 21])[-1], atol=1e-4)
    assert torch.allclose(out[2, -1], full_logits(model, [1, 5, 9, 22])[-1], atol=1e-4)


def test_fork_is_independent(model):
    session = HFSession(model, [2])
    session.start(torch.tensor([[1, 5, 9]]))
    twin = session.fork()
    twin.append([[30, 31]])
    a = session.append([[40]])
    assert session.tokens() == [1, 5, 9, 40] and twin.tokens() == [1, 5, 9, 30, 31]
    assert torch.allclose(a[0, -1], full_logits(model, [1, 5, 9, 40])[-1], atol=1e-4)


def test_left_padded_rows_match_unpadded(model):
    session = HFSession(model, [2])
    ids = torch.tensor([[0, 0, 1, 5], [1, 7, 3, 8]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    first = session.start(ids, mask)
    nxt = session.append([[6], [6]])
    assert session.tokens(0) == [1, 5, 6]
    assert torch.allclose(first[0], full_logits(model, [1, 5])[-1], atol=1e-4)
    assert torch.allclose(nxt[0, -1], full_logits(model, [1, 5, 6])[-1], atol=1e-4)


def test_tree_attention_gives_each_node_the_logits_of_its_path(model):
    """A tree in one forward (custom 4D mask, positions by depth) equals running each root-to-node path, on a
    left-padded batch; the block's leading chain stays a valid continuation after truncation."""
    session = HFSession(model, [2])
    ids = torch.tensor([[0, 0, 1, 5], [1, 7, 3, 8]])
    session.start(ids, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    tokens = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24]])
    parents = torch.tensor([[-1, 0, 1, 0, -1], [-1, -1, 1, 2, 1]])
    out = session.append_tree(tokens, parents)
    assert out.shape == (2, 5, model.config.vocab_size) and session.forward_passes == 2
    prompts = [[1, 5], [1, 7, 3, 8]]
    for b, prompt in enumerate(prompts):
        for node in range(5):
            path, cur = [], node
            while cur >= 0:
                path.append(int(tokens[b, cur]))
                cur = int(parents[b, cur])
            ref = full_logits(model, prompt + path[::-1])[-1]
            assert torch.allclose(out[b, node], ref, atol=1e-4), (b, node)
    session.truncate(session.length - 3)  # keep nodes 0 and 1 (a chain in row 0)
    after = session.append([[40], [40]])
    assert torch.allclose(after[0, -1], full_logits(model, [1, 5, 10, 11, 40])[-1], atol=1e-4)
    with pytest.raises(ValueError, match="node 1 has parent 3"):
        session.append_tree([[1, 2], [1, 2]], [[-1, 3], [-1, 0]])


def test_greedy_through_custom_generate_equals_transformers_greedy(model):
    ids = torch.tensor([[1, 5, 9, 14], [1, 33, 2, 7]])
    native = model.generate(ids, max_new_tokens=12, do_sample=False)
    ours = model.generate(ids, max_new_tokens=12, custom_generate=hf.generate, decoder="greedy")
    assert torch.equal(native, ours)


def test_sample_settings_and_seed_pass_through_generate(model):
    ids = torch.tensor([[1, 5, 9]])
    kwargs = dict(max_new_tokens=10, custom_generate=hf.generate, decoder="sample", do_sample=True,
                  temperature=0.9, top_k=20)
    a = model.generate(ids, seed=4, **kwargs)
    b = model.generate(ids, seed=4, **kwargs)
    outs = {tuple(model.generate(ids, seed=s, **kwargs)[0].tolist()) for s in range(6)}
    assert torch.equal(a, b) and len(outs) > 1
    out = model.generate(ids, seed=4, return_dict_in_generate=True, **kwargs)
    assert out.anydecode_stats["new_tokens"] == 10 and torch.equal(out.sequences, a)


def test_bad_settings_through_generate_are_config_errors(model):
    from anydecode import ConfigError

    with pytest.raises(ConfigError, match="seed"):
        model.generate(torch.tensor([[1, 5]]), max_new_tokens=2, custom_generate=hf.generate, decoder="sample",
                       do_sample=True, seed=-5)


def test_logits_processor_factory_applies_a_transform_decoder(model):
    from transformers import LogitsProcessorList

    proc = hf.logits_processor("sample", vocab_size=96, temperature=1.0, top_k=1)
    ids = torch.tensor([[1, 5, 9]])
    native = model.generate(ids, max_new_tokens=8, do_sample=False)
    # top_k=1 leaves only the argmax: sampling through the processor must reproduce greedy
    ours = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=0, logits_processor=LogitsProcessorList([proc]))
    assert torch.equal(native, ours)
