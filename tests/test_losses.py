"""jaxalign.losses: values equal the metrics, exact gradients (central differences, float64), finite gradients on
duplicate rows and zero distances, soft kNN → hard as the temperature → 0, training with optax inside equinox and
flax modules."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses as L
from jaxalign import metrics as M

optax = pytest.importorskip("optax")


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _pair(seed: int = 0, n: int = 40):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    y = np.tanh(x @ rng.normal(size=(6, 5))) + 0.3 * rng.normal(size=(n, 5))
    return x, y


LOSSES = {
    "cka": L.cka_loss,
    "cka_unbiased": functools.partial(L.cka_loss, unbiased=True),
    "cka_rbf": functools.partial(L.cka_loss, kernel="rbf", sigma=2.0),
    "cka_rbf_unbiased": functools.partial(L.cka_loss, kernel="rbf", sigma=2.0, unbiased=True),
    "dcor": L.dcor_loss,
    "reconstruction": L.reconstruction_loss,
    "soft_mutual_knn": functools.partial(L.soft_mutual_knn_loss, k=5, temperature=0.3),
    "soft_cknna": functools.partial(L.soft_cknna_loss, k=5, temperature=0.3),
}


def test_values_equal_the_metrics():
    x, y = _pair()
    cases = [
        (L.cka_loss(x, y), M.cka(x, y)),
        (L.cka_loss(x, y, unbiased=True), M.unbiased_cka(x, y)),
        (L.cka_loss(x, y, kernel="rbf", sigma=2.0), M.cka(x, y, kernel="rbf", sigma=2.0)),
        (L.dcor_loss(x, y), M.dcor(x, y)),
        (L.dcor_loss(x, y, exponent=0.5), M.dcor(x, y, exponent=0.5)),
    ]
    for loss, metric in cases:
        np.testing.assert_allclose(1.0 - float(loss), float(metric), rtol=0, atol=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_soft_knn_tends_to_the_hard_metrics(unbiased):
    x, y = _pair(1)
    hard_cknna = float(M.cknna(x, y, k=5, unbiased=unbiased))
    gaps = [abs(1.0 - float(L.soft_cknna_loss(x, y, k=5, temperature=t, unbiased=unbiased)) - hard_cknna)
            for t in (1.0, 1e-2, 1e-6)]  # fmt: skip
    assert gaps[-1] < 1e-9 and gaps[0] > 1e-3  # far at T = 1, equal in the limit
    soft = 1.0 - float(L.soft_mutual_knn_loss(x, y, k=5, temperature=1e-6))
    assert soft == pytest.approx(float(M.mutual_knn(x, y, k=5)), abs=1e-9)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_matches_central_differences(name):
    x, y = _pair(2, n=16)
    fn = LOSSES[name]
    v = np.random.default_rng(3).normal(size=x.shape)
    g = np.asarray(jax.grad(fn)(x, y))
    h = 1e-6
    numeric = (float(fn(x + h * v, y)) - float(fn(x - h * v, y))) / (2 * h)
    assert np.sum(g * v) == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    gy = np.asarray(jax.grad(fn, argnums=1)(x, y))  # the teacher side too (both may be trained)
    assert np.isfinite(gy).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_finite_gradients_on_duplicates_and_zero_distances(name):
    x, y = _pair(4, n=16)
    x[3] = x[2]  # a duplicate row: a zero distance off the diagonal
    y[7] = y[5]
    fn = LOSSES[name]
    for a, b in ((x, y), (np.zeros_like(x) + 1.0, y), (x, x)):  # duplicates, a collapsed embedding, perfect alignment
        grads = jax.grad(fn, argnums=(0, 1))(a, b)
        assert all(np.isfinite(np.asarray(g)).all() for g in grads), name


def test_perfect_alignment_gives_zero_loss():
    x, _ = _pair(5)
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))[0]
    for name in ("cka", "cka_unbiased", "dcor"):
        assert float(LOSSES[name](x, 3.0 * x @ rot)) == pytest.approx(0.0, abs=1e-6), name
    assert float(L.reconstruction_loss(x, 3.0 * x @ rot, alpha=1e-9)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_float32_within_1e4_of_float64(name):
    x, y = _pair(13, n=32)
    x = x * 1e3 + 50.0  # off-centre, large scale
    want = float(LOSSES[name](x, y))
    got = LOSSES[name](x.astype(np.float32), y.astype(np.float32))
    assert got.dtype == np.float32 and float(got) == pytest.approx(want, abs=1e-4), name


def test_jit_and_vmap_over_minibatches():
    x, y = _pair(6, n=48)
    xb, yb = x.reshape(3, 16, 6), y.reshape(3, 16, 5)
    for name, fn in LOSSES.items():
        batched = jax.jit(jax.vmap(fn))(xb, yb)
        looped = [float(fn(a, b)) for a, b in zip(xb, yb, strict=True)]
        np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-10, err_msg=name)


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_decreases_under_an_optax_optimiser(name):
    """A linear student x W learns to align with a nonlinear teacher y: 200 Adam steps lower every loss."""
    x, y = _pair(7, n=32)
    fn = LOSSES[name]
    w = jnp.asarray(np.random.default_rng(8).normal(size=(6, 5)) * 0.1)
    opt = optax.adam(0.05)
    state = opt.init(w)

    @jax.jit
    def step(w, state):
        loss, g = jax.value_and_grad(lambda w: fn(x @ w, y))(w)
        updates, state = opt.update(g, state)
        return optax.apply_updates(w, updates), state, loss

    first = float(fn(x @ w, y))
    for _ in range(200):
        w, state, _ = step(w, state)
    assert float(fn(x @ w, y)) < first - 0.02, name


def test_learned_regulariser_and_bandwidth_get_gradients():
    x, y = _pair(9, n=24)
    g_alpha = jax.grad(lambda la: L.reconstruction_loss(x, y, alpha=jnp.exp(la)))(jnp.log(1e-2))
    g_sigma = jax.grad(lambda s: L.cka_loss(x, y, kernel="rbf", sigma=s))(2.0)
    assert np.isfinite(g_alpha) and g_alpha != 0 and np.isfinite(g_sigma) and g_sigma != 0


def test_alignment_regularized_applies_the_schedule():
    x, y = _pair(10, n=16)
    schedule = optax.linear_schedule(0.0, 0.5, transition_steps=10)
    loss = L.alignment_regularized(lambda w, b: jnp.sum(w**2), lambda w, b: L.cka_loss(b[0] @ w, b[1]), schedule)
    w = jnp.ones((6, 5)) * 0.1
    total0, aux0 = loss(w, (x, y), 0)
    total10, aux10 = loss(w, (x, y), 10)
    assert float(total0) == pytest.approx(float(aux0["task"])) and float(aux0["weight"]) == 0.0
    assert float(total10) == pytest.approx(float(aux10["task"]) + 0.5 * float(aux10["alignment"]))
    grads = jax.grad(lambda w: loss(w, (x, y), 10)[0])(w)
    assert np.isfinite(np.asarray(grads)).all()


def test_inside_an_equinox_module():
    eqx = pytest.importorskip("equinox")
    x, y = _pair(11, n=32)
    student = eqx.nn.MLP(6, 5, width_size=16, depth=1, key=jax.random.PRNGKey(0))
    opt = optax.adam(1e-2)
    state = opt.init(eqx.filter(student, eqx.is_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: L.cka_loss(jax.vmap(m)(x), y))(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    start = float(L.cka_loss(jax.vmap(student)(x), y))
    for _ in range(100):
        student, state, _ = step(student, state)
    assert float(L.cka_loss(jax.vmap(student)(x), y)) < start - 0.05


def test_inside_a_flax_nnx_module():
    nnx = pytest.importorskip("flax.nnx")
    x, y = _pair(12, n=32)
    student = nnx.Linear(6, 5, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    optimizer = nnx.Optimizer(student, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: L.dcor_loss(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    start = float(L.dcor_loss(student(x), y))
    for _ in range(100):
        step(student, optimizer)
    assert float(L.dcor_loss(student(x), y)) < start - 0.02


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: L.cka_loss(np.ones(5), np.ones((5, 2))), "`x` must be a 2-D"),
        (lambda: L.cka_loss(np.ones((5, 2)), np.ones((6, 2))), "the same n samples"),
        (lambda: L.cka_loss(np.ones((3, 2)), np.ones((3, 2)), unbiased=True), "at least 4"),
        (lambda: L.cka_loss(np.ones((5, 2)), np.ones((5, 2)), kernel="poly"), "`kernel` must be"),
        (lambda: L.dcor_loss(np.ones((5, 2)), np.ones((5, 2)), exponent=2.0), "`exponent`"),
        (lambda: L.soft_cknna_loss(np.ones((5, 2)), np.ones((5, 2)), k=4), "`k` must be an integer in"),
        (lambda: L.reconstruction_loss(np.ones((5, 2)), np.ones((5, 2)), test=np.ones(4, bool)), "`test` must be"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
