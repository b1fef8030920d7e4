"""The flow head's cache of frozen-backbone latents (scfate.models.latent_cache): the latents it returns are the
encoder's own, bit for bit; a batch with a row it has not seen is encoded whole; above its memory bound it stops."""

import torch

from scfate.models.latent_cache import LatentCache


class CountingEncoder:
    def __init__(self):
        torch.manual_seed(0)
        self.lin, self.calls = torch.nn.Linear(5, 3), 0

    def __call__(self, x, ctx):
        self.calls += 1
        return self.lin(x).detach() + ctx


def test_known_rows_come_from_the_cache_and_equal_the_encoders_output():
    torch.manual_seed(1)
    cells = torch.randn(50, 5)
    enc, cache = CountingEncoder(), LatentCache()
    first = torch.arange(0, 30)
    rows_a = first[torch.randperm(30)[:16]]
    z_a = cache.encode(enc, cells[rows_a], rows_a, torch.tensor(0.0))
    assert enc.calls == 1 and torch.equal(z_a, enc(cells[rows_a], torch.tensor(0.0)))
    enc.calls = 0
    again = rows_a.flip(0)[:8]  # rows seen, in another order and number: no encoder call, the same latents
    assert torch.equal(cache.encode(enc, cells[again], again, torch.tensor(0.0)), z_a.flip(0)[:8])
    assert enc.calls == 0
    mixed = torch.cat([rows_a[:4], torch.tensor([45])])  # one row never seen, beyond the cache's size
    z_m = cache.encode(enc, cells[mixed], mixed, torch.tensor(0.0))
    assert enc.calls == 1 and torch.equal(z_m, enc(cells[mixed], torch.tensor(0.0)))
    assert torch.equal(cache.encode(enc, cells[mixed], mixed, torch.tensor(0.0)), z_m) and enc.calls == 2


def test_no_rows_or_over_the_bound_encodes_every_batch():
    cells, rows = torch.randn(20, 5), torch.arange(20)
    enc = CountingEncoder()
    small = LatentCache(max_bytes=10 * 3 * 4)  # room for 10 latents, 20 asked for
    for _ in range(3):
        assert torch.equal(small.encode(enc, cells, rows, torch.tensor(0.0)), enc(cells, torch.tensor(0.0)))
    assert not small.enabled and small.z is None and enc.calls == 6
    grows = LatentCache(max_bytes=10 * 3 * 4)  # doubling stops at the bound, rows below it still fit
    grows.encode(enc, cells[:6], rows[:6], torch.tensor(0.0))
    grows.encode(enc, cells[9:10], rows[9:10], torch.tensor(0.0))
    assert grows.enabled and len(grows.z) == 10 and bool(grows.known[:6].all() and grows.known[9])
    enc.calls = 0
    LatentCache().encode(enc, cells, None, torch.tensor(0.0))
    assert enc.calls == 1


def test_each_fit_starts_with_an_empty_cache():
    from scfate.models.flow_head import FlowHead

    head = FlowHead.__new__(FlowHead)
    torch.nn.Module.__init__(head)
    head.latents = LatentCache()
    head.latents.encode(CountingEncoder(), torch.randn(4, 5), torch.arange(4), torch.tensor(0.0))
    assert head.latents.known is not None
    head.on_fit_start()
    assert head.latents.known is None
