"""Solutions of 04_tvm_autotuning (one section per exercise id; injected by `course run --with-solutions`)."""

# %% [04.matmul_flops]
my_flops = 2 * N * L * M  # one multiply + one add per multiply-accumulate, N·M outputs × L each

# %% [04.cache_write]
def my_schedule(mod, tile_y, tile_x):
    sch = tvm.s_tir.Schedule(mod)
    block = sch.get_sblock("C")
    i, j, k = sch.get_loops(block)
    io, ii = sch.split(i, factors=[None, tile_y])
    jo, ji = sch.split(j, factors=[None, tile_x])
    sch.reorder(io, jo, k, ii, ji)
    cw = sch.cache_write(block, 0, "global")   # C tile accumulates in a small buffer ...
    sch.reverse_compute_at(cw, jo)             # ... written back once per (io, jo) tile
    sch.vectorize(ji)
    sch.parallel(io)
    return sch

# %% [04.greedy_next_batch]
class GreedyTuner(tuners.Tuner):
    name = "greedy"
    eps = 0.2

    def next_batch(self, batch_size):
        neighbours = []
        if self.best is not None:
            genes = self.space.genes(self.best.index)
            for d, dim in enumerate(self.space.dims):      # every config with one knob changed
                for v in range(dim):
                    if v != genes[d]:
                        g = list(genes)
                        g[d] = v
                        i = self.space.index(g)
                        if i not in self.visited:
                            neighbours.append(i)
            self.rng.shuffle(neighbours)
        out = []
        while len(out) < batch_size:
            explore = not neighbours or self.rng.random() < self.eps   # each slot: random with probability eps
            pick = self._random_unvisited(1, set(out)) if explore else [neighbours.pop()]
            if not pick and neighbours:
                pick = [neighbours.pop()]
            if not pick:
                break                                              # the whole space is measured
            if pick[0] not in out:
                out.append(pick[0])
        return out

# %% [04.budget]
my_first_90 = next((i for i, v in enumerate(budget_curve, 1) if v >= 0.9), 0)  # first point at or above 0.9
