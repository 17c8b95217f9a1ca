from scripts.sampling import AnatomyBatchSampler


def items(domains: list[int]) -> list[dict]:
    return [{"domain": d, "image": f"{i}.png"} for i, d in enumerate(domains)]


def test_batches_hold_one_anatomy_and_cover_every_item_once():
    domains = [0] * 10 + [1] * 7 + [2] * 3
    sampler = AnatomyBatchSampler(items(domains), batch_size=4, seed=1)
    batches = list(sampler)
    assert all(len({domains[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(20))
    assert len(batches) == len(sampler) == 3 + 2 + 1


def test_fresh_interleaved_order_every_epoch_and_reproducible():
    domains = [0] * 12 + [1] * 12
    s = AnatomyBatchSampler(items(domains), batch_size=2, seed=3)
    e1, e2 = list(s), list(s)
    assert e1 != e2
    assert [domains[b[0]] for b in e1] != [0] * 6 + [1] * 6  # anatomies interleaved, not in blocks
    again = AnatomyBatchSampler(items(domains), batch_size=2, seed=3)
    assert list(again) == e1


def test_no_shuffle_and_drop_last_and_replicas():
    domains = [0, 0, 0, 1, 1]
    assert list(AnatomyBatchSampler(items(domains), 2, shuffle=False)) == [[0, 1], [2], [3, 4]]
    assert list(AnatomyBatchSampler(items(domains), 2, shuffle=False, drop_last=True)) == [[0, 1], [3, 4]]
    r0 = list(AnatomyBatchSampler(items(domains), 2, shuffle=False, num_replicas=2, rank=0))
    r1 = list(AnatomyBatchSampler(items(domains), 2, shuffle=False, num_replicas=2, rank=1))
    assert r0 == [[0, 1]] and r1 == [[2]]
