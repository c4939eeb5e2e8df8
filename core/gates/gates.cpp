// DSelect-k (Hazimeh et al., NeurIPS 2021, arXiv 2106.03760), Top-k (Shazeer
// et al. 2017) and softmax gates, all T tasks in one batched computation.
// docs/gates.md states the math and the choices made here.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gates/gate.h"
#include "core/gates/gates_impl.h"
#include "core/gates/regularizers.h"
#include "core/gates/smooth_step.h"
#include "core/proto/config.pb.h"

namespace dsk::core {

namespace {

// Keyed by the name the model will give the parameter ("gate." + local name)
// so that init does not depend on which rank or object creates the gate.
at::Tensor init_parameter(uint64_t seed, const std::string& name, at::IntArrayRef shape,
                          double bound, at::ScalarType dtype) {
  at::Generator gen = make_generator(seed, "gate." + name);
  return uniform_parameter(shape, bound, gen, dtype);
}

// x [B, p], weight [T, o, p], bias [T, o] -> [T, B, o] with a single matmul
// against the [T*o, p] view, so the task count never becomes a loop.
at::Tensor batched_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t tasks = weight.size(0);
  const int64_t out = weight.size(1);
  at::Tensor y = at::addmm(bias.reshape({tasks * out}), x,
                           weight.reshape({tasks * out, weight.size(2)}).t());
  return y.view({x.size(0), tasks, out}).permute({1, 0, 2});
}

at::Tensor to_gate_dtype(const at::Tensor& x, int64_t input_dim, at::ScalarType dtype) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == input_dim, "gate: expected x of shape [B, ",
              input_dim, "], got ", x.sizes());
  return x.to(dtype);
}

// Static gates still report [T, B, n]; without an x there is one row.
int64_t batch_of(const at::Tensor& x) {
  return x.defined() && x.dim() >= 1 ? x.size(0) : 1;
}

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// A selector whose reachable mass is below this would give 1/s (and 1/s^2 in
// the backward) that overflows, float32 first; there it contributes 1/kTiny
// and no gradient. Such a selector sits on an unreachable code with every
// z saturated, where the exact gradient is 0 anyway.
constexpr double kPenaltyFloor = 1e-12;

// ------------------------------------------- DSelect-k selectors, fused (CPU)
//
// The selectors r, the weights q = sum_l mix_l r_l, and per selector the
// entropy sum_i -r_i log(r_i + 1e-6) and the reachable mass sum_i r_i, from
// s = S(z) [L, k, m] and mix [L, k] (L = T*B rows, or T for static gates),
// in one pass over cache-sized blocks of rows, with a hand-written backward.
// Only the outputs are written at full size ([L, k, n] selectors, [L, n]
// weights); the chain levels and the entropy terms live in a block that
// stays in L2. The product is the same chain of multiplies in the same order
// as the tensor version (dselect_k_selectors_reference below), so the
// selectors are bit-identical and exact zeros stay exact.

// Width of the chain after bit j: the prefixes of reachable codes,
// ceil(n / 2^(m-1-j)); the last level has width n, level 0 always 2.
std::vector<int64_t> chain_widths(int64_t n, int64_t m) {
  std::vector<int64_t> w(m);
  for (int64_t j = 0; j < m; ++j) {
    const int64_t span = int64_t{1} << (m - 1 - j);
    w[j] = (n + span - 1) / span;
  }
  return w;
}

// Rows per block: about 64K selector entries (256 KB in float32), so a
// block's [rows, k, n] scratch stays in L2 while it is used.
int64_t rows_per_block(int64_t k, int64_t n) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, k * n));
}

// Where each chain level lives in a row's scratch, and how rows are
// blocked: shared by the forward and the backward so they walk alike.
struct ChainLayout {
  std::vector<int64_t> width;   // chain_widths
  std::vector<int64_t> offset;  // start of level j in the scratch
  int64_t scratch = 0;          // scratch entries per row and selector
  int64_t block = 1;            // rows per block
  int64_t blocks = 0;
};

ChainLayout chain_layout(int64_t n, int64_t m, int64_t k, int64_t rows) {
  ChainLayout layout;
  layout.width = chain_widths(n, m);
  layout.offset.assign(m, 0);
  for (int64_t j = 1; j < m; ++j) layout.offset[j] = layout.offset[j - 1] + layout.width[j - 1];
  layout.scratch = m > 0 ? layout.offset[m - 1] + layout.width[m - 1] : 0;
  layout.block = rows_per_block(k, n);
  layout.blocks = (rows + layout.block - 1) / layout.block;
  return layout;
}

// sum_{i < count} term(i) in the accumulation type, in 8 independent lanes
// (a single serial sum is bound by the add latency, not by the data).
template <typename T, typename F>
inline at::acc_type<T, false> lane_sum(int64_t count, F term) {
  using acc_t = at::acc_type<T, /*is_cuda=*/false>;
  acc_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= count; i += 8)
    for (int u = 0; u < 8; ++u) a[u] += static_cast<acc_t>(term(i + u));
  for (; i < count; ++i) a[i % 8] += static_cast<acc_t>(term(i));
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// The chain for one selector: level j (width w[j]) at levels + off[j] for
// j < last, level `last` into out; `last` = m - 1 gives the selector itself.
template <typename T>
inline void build_chain(const T* s, int64_t last, const std::vector<int64_t>& w,
                        const std::vector<int64_t>& off, T* levels, T* out) {
  T* first = last == 0 ? out : levels;
  first[0] = T(1) - s[0];
  first[1] = s[0];
  for (int64_t j = 1; j <= last; ++j) {
    const T sj = s[j];
    const T om = T(1) - sj;
    const T* prev = levels + off[j - 1];
    T* cur = j == last ? out : levels + off[j];
    const int64_t wc = w[j];
    const int64_t pairs = wc / 2;
    for (int64_t c = 0; c < pairs; ++c) {
      cur[2 * c] = prev[c] * om;
      cur[2 * c + 1] = prev[c] * sj;
    }
    if (wc % 2) cur[wc - 1] = prev[pairs] * om;
  }
}

constexpr double kEntropyEps = 1e-6;

// log(r + 1e-6) of a block of selectors into `out` (vectorized ATen ops on
// data that is in cache).
void block_log(const at::Tensor& r, at::Tensor& out) {
  if (!out.defined() || out.sizes() != r.sizes()) out = at::empty_like(r);
  at::add_out(out, r, kEntropyEps);
  out.log_();
}

template <typename T>
void selectors_forward_block(const T* s, const T* mix, T* sel, T* q, T* reach, int64_t r0,
                             int64_t r1, int64_t k, int64_t m, int64_t n,
                             const std::vector<int64_t>& w, const std::vector<int64_t>& off,
                             std::vector<T>& levels) {
  for (int64_t row = r0; row < r1; ++row) {
    T* qr = q + row * n;
    for (int64_t l = 0; l < k; ++l) {
      const int64_t sl = row * k + l;
      T* r = sel + sl * n;
      build_chain(s + sl * m, m - 1, w, off, levels.data(), r);
      const T a = mix[sl];
      if (l == 0) {
        for (int64_t i = 0; i < n; ++i) qr[i] = a * r[i];
      } else {
        for (int64_t i = 0; i < n; ++i) qr[i] += a * r[i];
      }
      // Only the non-power-of-two penalty reads the reachable mass.
      if (reach != nullptr)
        reach[sl] = static_cast<T>(lane_sum<T>(n, [&](int64_t i) { return r[i]; }));
    }
  }
}

// sel [L, k, n], q [L, n], entropy [L, k], reach [L, k].
std::vector<at::Tensor> selectors_forward(const at::Tensor& s_in, const at::Tensor& mix_in,
                                          int64_t n) {
  const at::Tensor s = s_in.contiguous();
  const at::Tensor mix = mix_in.contiguous();
  const int64_t L = s.size(0), k = s.size(1), m = s.size(2);
  at::Tensor sel = at::empty({L, k, n}, s.options());
  at::Tensor q = at::empty({L, n}, s.options());
  at::Tensor entropy = at::empty({L, k}, s.options());
  const bool need_reach = !is_power_of_two(n);
  at::Tensor reach = need_reach ? at::empty({L, k}, s.options()) : at::zeros({L, k}, s.options());
  const ChainLayout layout = chain_layout(n, m, k, L);
  const std::vector<int64_t>& w = layout.width;
  const std::vector<int64_t>& off = layout.offset;
  const int64_t block = layout.block;
  const int64_t blocks = layout.blocks;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "dselect_k_selectors_forward", [&] {
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> levels(layout.scratch);
      at::Tensor logs;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * block, r1 = std::min(L, r0 + block);
        selectors_forward_block(s.data_ptr<scalar_t>(), mix.data_ptr<scalar_t>(),
                                sel.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                                need_reach ? reach.data_ptr<scalar_t>() : nullptr, r0, r1, k, m,
                                n, w, off, levels);
        // The entropy of the block while it is in cache.
        block_log(sel.narrow(0, r0, r1 - r0), logs);
        const scalar_t* lp = logs.data_ptr<scalar_t>();
        const scalar_t* rp = sel.data_ptr<scalar_t>() + r0 * k * n;
        scalar_t* ep = entropy.data_ptr<scalar_t>() + r0 * k;
        for (int64_t sl = 0; sl < (r1 - r0) * k; ++sl) {
          const scalar_t* r = rp + sl * n;
          const scalar_t* lg = lp + sl * n;
          ep[sl] = -static_cast<scalar_t>(lane_sum<scalar_t>(n, [&](int64_t i) { return r[i] * lg[i]; }));
        }
      }
    });
  });
  return {sel, q, entropy, reach};
}

// Gradients of s [L, k, m] and mix [L, k] given those of the four outputs
// (any may be undefined: that output does not reach the loss). logs holds
// log(r + 1e-6) of the block when the entropy has a gradient.
template <typename T>
void selectors_backward_block(const T* s, const T* mix, const T* sel, const T* gsel,
                              const T* gq, const T* gent, const T* greach, const T* logs, T* gs,
                              T* gmix, int64_t r0, int64_t r1, int64_t k, int64_t m, int64_t n,
                              const std::vector<int64_t>& w, const std::vector<int64_t>& off,
                              std::vector<T>& levels, std::vector<T>& g, std::vector<T>& ga,
                              std::vector<T>& gb) {
  const T eps = static_cast<T>(kEntropyEps);
  for (int64_t row = r0; row < r1; ++row) {
    for (int64_t l = 0; l < k; ++l) {
      const int64_t sl = row * k + l;
      const T* r = sel + sl * n;
      // dLoss/dr for this selector, from the selector's own gradient, the
      // weights', the entropy's, d/dr [-r log(r + eps)] =
      // -(log(r + eps) + r / (r + eps)), and the reachable mass's.
      T* gr = g.data();
      if (gsel != nullptr) std::copy(gsel + sl * n, gsel + (sl + 1) * n, gr);
      else std::fill(gr, gr + n, T(0));
      if (gq != nullptr) {
        const T a = mix[sl];
        const T* gqr = gq + row * n;
        gmix[sl] = static_cast<T>(lane_sum<T>(n, [&](int64_t i) { return gqr[i] * r[i]; }));
        for (int64_t i = 0; i < n; ++i) gr[i] += a * gqr[i];
      } else {
        gmix[sl] = T(0);
      }
      if (gent != nullptr) {
        const T ge = gent[sl];
        const T* lg = logs + (sl - r0 * k) * n;
        for (int64_t i = 0; i < n; ++i) gr[i] -= ge * (lg[i] + r[i] / (r[i] + eps));
      }
      if (greach != nullptr) {
        const T gm = greach[sl];
        for (int64_t i = 0; i < n; ++i) gr[i] += gm;
      }
      // Back through the chain, last bit first; levels 0..m-2 recomputed.
      const T* sv = s + sl * m;
      T* gsl = gs + sl * m;
      if (m >= 2) build_chain(sv, m - 2, w, off, levels.data(), levels.data() + off[m - 2]);
      const T* cur = gr;
      for (int64_t j = m - 1; j >= 1; --j) {
        const T sj = sv[j];
        const T om = T(1) - sj;
        const T* prev = levels.data() + off[j - 1];
        T* gp = (j % 2) ? ga.data() : gb.data();
        const int64_t wc = w[j], pairs = wc / 2;
        for (int64_t c = 0; c < pairs; ++c) gp[c] = cur[2 * c] * om + cur[2 * c + 1] * sj;
        at::acc_type<T, false> dsj =
            lane_sum<T>(pairs, [&](int64_t c) { return prev[c] * (cur[2 * c + 1] - cur[2 * c]); });
        if (wc % 2) {
          // The last prefix keeps only its 0-branch (1 - S(z_j)).
          gp[pairs] = cur[wc - 1] * om;
          dsj -= static_cast<at::acc_type<T, false>>(prev[pairs] * cur[wc - 1]);
        }
        gsl[j] = static_cast<T>(dsj);
        cur = gp;
      }
      gsl[0] = cur[1] - cur[0];
    }
  }
}

std::vector<at::Tensor> selectors_backward(const at::Tensor& s, const at::Tensor& mix,
                                           const at::Tensor& sel, const at::Tensor& gsel_in,
                                           const at::Tensor& gq_in, const at::Tensor& gent_in,
                                           const at::Tensor& greach_in) {
  const int64_t L = s.size(0), k = s.size(1), m = s.size(2), n = sel.size(2);
  at::Tensor gs = at::empty_like(s);
  at::Tensor gmix = at::empty_like(mix);
  auto dense = [](const at::Tensor& t) { return t.defined() ? t.contiguous() : t; };
  const at::Tensor gsel = dense(gsel_in), gq = dense(gq_in), gent = dense(gent_in),
                   greach = dense(greach_in);
  const ChainLayout layout = chain_layout(n, m, k, L);
  const std::vector<int64_t>& w = layout.width;
  const std::vector<int64_t>& off = layout.offset;
  const int64_t block = layout.block;
  const int64_t blocks = layout.blocks;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "dselect_k_selectors_backward", [&] {
    auto ptr = [](const at::Tensor& t) -> const scalar_t* {
      return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
    };
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> levels(layout.scratch), g(n), ga(n), gb(n);
      at::Tensor logs;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * block, r1 = std::min(L, r0 + block);
        if (gent.defined()) block_log(sel.narrow(0, r0, r1 - r0), logs);
        selectors_backward_block(ptr(s), ptr(mix), ptr(sel), ptr(gsel), ptr(gq), ptr(gent),
                                 ptr(greach), gent.defined() ? ptr(logs) : nullptr,
                                 gs.data_ptr<scalar_t>(), gmix.data_ptr<scalar_t>(), r0, r1, k,
                                 m, n, w, off, levels, g, ga, gb);
      }
    });
  });
  return {gs, gmix};
}

struct DSelectKSelectors : public torch::autograd::Function<DSelectKSelectors> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& s, const at::Tensor& mix,
                                                int64_t n) {
    ctx->set_materialize_grads(false);
    std::vector<at::Tensor> out = selectors_forward(s, mix, n);
    ctx->save_for_backward({s.contiguous(), mix.contiguous(), out[0]});
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> g =
        selectors_backward(saved[0], saved[1], saved[2], grads[0], grads[1], grads[2], grads[3]);
    return {g[0], g[1], at::Tensor()};
  }
};

// The tensor version of the chain (any device): after bit j the last dim
// indexes the code prefixes, r_new[2*c + b] = r[c] * (b ? S(z_j) : 1 - S(z_j)),
// keeping only the prefixes of reachable codes.
at::Tensor dselect_k_selectors_reference(const at::Tensor& s, int64_t n) {
  const int64_t m = s.size(-1);
  at::Tensor selectors;
  for (int64_t j = 0; j < m; ++j) {
    at::Tensor sj = s.select(-1, j).unsqueeze(-1);  // [..., k, 1]
    selectors = j == 0 ? at::cat({1.0 - sj, sj}, -1)
                       : at::stack({selectors * (1.0 - sj), selectors * sj}, -1).flatten(-2);
    const int64_t span = int64_t{1} << (m - 1 - j);  // codes per prefix
    const int64_t reachable = (n + span - 1) / span;
    if (reachable < selectors.size(-1)) selectors = selectors.narrow(-1, 0, reachable);
  }
  return selectors;
}

}  // namespace

at::Tensor smooth_step(const at::Tensor& t, double gamma) {
  const double half = gamma / 2.0;
  // The cubic is evaluated on the clamped argument: an unclamped t^3 can
  // overflow for huge |t|, and at::where's backward would then form 0 * inf.
  at::Tensor tc = t.clamp(-half, half);
  at::Tensor cubic = tc * (3.0 / (2.0 * gamma) - (2.0 / (gamma * gamma * gamma)) * tc * tc) + 0.5;
  at::Tensor zero = at::zeros_like(t);
  at::Tensor one = at::ones_like(t);
  return at::where(t <= -half, zero, at::where(t >= half, one, cubic));
}

int64_t dselect_k_num_bits(int64_t num_experts) {
  int64_t m = 0;
  while ((int64_t{1} << m) < num_experts) ++m;
  return m;
}

at::Tensor dselect_k_codes(int64_t num_experts) {
  const int64_t m = dselect_k_num_bits(num_experts);
  at::Tensor codes = at::empty({num_experts, m}, at::TensorOptions().dtype(at::kBool));
  auto acc = codes.accessor<bool, 2>();
  for (int64_t i = 0; i < num_experts; ++i)
    for (int64_t j = 0; j < m; ++j) acc[i][j] = ((i >> (m - 1 - j)) & 1) != 0;
  return codes;
}

// ---------------------------------------------------------------- DSelect-k

DSelectKGate::DSelectKGate(const GateShape& shape, int64_t k, double gamma, bool per_example,
                           uint64_t seed, at::ScalarType dtype)
    : num_tasks_(shape.num_tasks),
      num_experts_(shape.num_experts),
      input_dim_(shape.input_dim),
      k_(k),
      num_bits_(dselect_k_num_bits(shape.num_experts)),
      gamma_(gamma),
      per_example_(per_example),
      dtype_(dtype) {
  TORCH_CHECK(num_tasks_ >= 1 && num_experts_ >= 1 && k_ >= 1 && gamma_ > 0,
              "DSelectKGate: invalid shape or options");
  const int64_t T = num_tasks_, m = num_bits_, p = input_dim_;
  const double z_bound = gamma_ / 100.0;  // PAPER.md: nothing saturated at init
  const double alpha_bound = 0.05;
  if (per_example_) {
    TORCH_CHECK(p >= 1, "DSelectKGate: input_dim must be >= 1");
    z_weight_ = init_parameter(seed, "z_weight", {T, k_ * m, p}, z_bound, dtype_);
    z_bias_ = init_parameter(seed, "z_bias", {T, k_ * m}, z_bound, dtype_);
    alpha_weight_ = init_parameter(seed, "alpha_weight", {T, k_, p}, alpha_bound, dtype_);
    alpha_bias_ = init_parameter(seed, "alpha_bias", {T, k_}, alpha_bound, dtype_);
  } else {
    z_ = init_parameter(seed, "z", {T, k_, m}, z_bound, dtype_);
    alpha_ = init_parameter(seed, "alpha", {T, k_}, alpha_bound, dtype_);
  }
}

NamedTensors DSelectKGate::parameters() const {
  if (per_example_)
    return {{"z_weight", z_weight_},
            {"z_bias", z_bias_},
            {"alpha_weight", alpha_weight_},
            {"alpha_bias", alpha_bias_}};
  return {{"z", z_}, {"alpha", alpha_}};
}

GateOutput DSelectKGate::forward(const at::Tensor& x, bool /*training*/) {
  const int64_t T = num_tasks_, n = num_experts_, m = num_bits_;
  // z: [..., k, m], alpha: [..., k] with leading [T, B] or [T].
  at::Tensor z, alpha;
  int64_t batch = 1;
  if (per_example_) {
    at::Tensor xd = to_gate_dtype(x, input_dim_, dtype_);
    batch = xd.size(0);
    alpha = batched_linear(xd, alpha_weight_, alpha_bias_);  // [T, B, k]
    if (m > 0) z = batched_linear(xd, z_weight_, z_bias_).reshape({T, batch, k_, m});
  } else {
    batch = batch_of(x);
    alpha = alpha_;
    z = z_;
  }
  at::Tensor mix = at::softmax(alpha, -1);  // [..., k]

  at::Tensor selectors;  // r(z^(l)): [..., k, n]
  at::Tensor weights;    // q: [..., n]
  at::Tensor entropy;    // per selector sum_i -r_i log(r_i + 1e-6): [..., k]
  at::Tensor reachable;  // per selector sum_i r_i: [..., k]
  if (m == 0) {
    // One expert: r = 1 for every selector, q exactly 1. The 0 * mix term
    // keeps alpha in the graph so its gradient is a defined 0, not missing.
    std::vector<int64_t> sel_shape(mix.sizes().begin(), mix.sizes().end());
    sel_shape.push_back(1);
    selectors = at::ones(sel_shape, mix.options());
    weights = mix.sum(-1, /*keepdim=*/true) * 0.0 + 1.0;
  } else {
    // Built bit by bit, MSB first, keeping only the prefixes of reachable
    // codes: the same chain of multiplies in the same order as prod_j
    // (exact zeros stay exact, the backward needs no data-dependent branch),
    // at about 2n instead of n*m products per selector.
    at::Tensor s = smooth_step(z, gamma_);  // [..., k, m]
    if (s.device().is_cpu()) {
      // Fused, in cache-sized blocks of rows (all tasks at once, no loop
      // over tasks): only the outputs are written at full size.
      std::vector<int64_t> lead(mix.sizes().begin(), mix.sizes().end() - 1);  // [T] or [T, B]
      auto shaped = [&](const at::Tensor& t, int64_t last) {
        std::vector<int64_t> shape = lead;
        shape.push_back(k_);
        if (last > 0) shape.push_back(last);
        return t.view(shape);
      };
      at::Tensor s3 = s.reshape({-1, k_, m});
      auto outs = DSelectKSelectors::apply(s3, mix.reshape({-1, k_}), n);
      selectors = shaped(outs[0], n);
      std::vector<int64_t> qshape = lead;
      qshape.push_back(n);
      weights = outs[1].view(qshape);
      entropy = shaped(outs[2], 0);
      reachable = shaped(outs[3], 0);
    } else {
      selectors = dselect_k_selectors_reference(s, n);
      weights = (mix.unsqueeze(-1) * selectors).sum(-2);
    }
  }

  GateOutput out;
  out.per_example = per_example_;
  out.weights = per_example_ ? weights : weights.unsqueeze(1).expand({T, batch, n});
  out.selector_outputs = selectors;
  out.entropy_sum = entropy.defined() ? entropy.sum()
                                      : (-selectors * at::log(selectors + 1e-6)).sum();
  if (is_power_of_two(n)) {
    out.nonpow2_penalty_sum = at::zeros({}, weights.options());
  } else {
    if (!reachable.defined()) reachable = selectors.sum(-1);
    at::Tensor floor = at::full_like(reachable, kPenaltyFloor);
    out.nonpow2_penalty_sum =
        at::reciprocal(at::where(reachable < kPenaltyFloor, floor, reachable)).sum();
  }
  out.load_balance_loss = at::zeros({}, weights.options());
  return out;
}

// ------------------------------------------------------------ Top-k, softmax

LogitsGate::LogitsGate(const GateShape& shape, int64_t top_k, bool per_example, uint64_t seed,
                       at::ScalarType dtype, bool noisy, LoadBalance balance)
    : num_tasks_(shape.num_tasks),
      num_experts_(shape.num_experts),
      input_dim_(shape.input_dim),
      top_k_(top_k),
      per_example_(per_example),
      dtype_(dtype),
      noisy_(noisy),
      balance_(balance),
      noise_gen_(make_generator(seed, "gate.noise")) {
  TORCH_CHECK(num_tasks_ >= 1 && num_experts_ >= 1 && top_k_ >= 0 && top_k_ <= num_experts_,
              "LogitsGate: invalid shape or options");
  TORCH_CHECK(top_k_ > 0 || (!noisy_ && balance_ == LoadBalance::kNone),
              "LogitsGate: noise and load balancing are for Top-k only");
  const int64_t T = num_tasks_, n = num_experts_, p = input_dim_;
  auto zeros = [&](at::IntArrayRef sizes) {
    return at::zeros(sizes, at::TensorOptions().dtype(dtype_)).requires_grad_(true);
  };
  if (per_example_) {
    TORCH_CHECK(p >= 1, "LogitsGate: input_dim must be >= 1");
    // The bound of a default Linear(p, n): weight and bias U(-1/sqrt(p), 1/sqrt(p)).
    const double bound = 1.0 / std::sqrt(static_cast<double>(p));
    weight_ = init_parameter(seed, "weight", {T, n, p}, bound, dtype_);
    bias_ = init_parameter(seed, "bias", {T, n}, bound, dtype_);
    if (noisy_) {
      // Shazeer et al. 2017: W_noise starts at 0 (noise scale softplus(0)).
      noise_weight_ = zeros({T, n, p});
      noise_bias_ = zeros({T, n});
    }
  } else {
    // Small and random rather than 0, so Top-k starts without ties.
    logits_ = init_parameter(seed, "logits", {T, n}, 0.05, dtype_);
    if (noisy_) noise_logits_ = zeros({T, n});
  }
}

void LogitsGate::set_noise_seed(uint64_t seed) { noise_gen_ = make_generator(seed, "gate.noise"); }

NamedTensors LogitsGate::parameters() const {
  NamedTensors params;
  if (per_example_) {
    params = {{"weight", weight_}, {"bias", bias_}};
    if (noisy_) {
      params.push_back({"noise_weight", noise_weight_});
      params.push_back({"noise_bias", noise_bias_});
    }
  } else {
    params = {{"logits", logits_}};
    if (noisy_) params.push_back({"noise_logits", noise_logits_});
  }
  return params;
}

namespace {
// Standard normal CDF.
at::Tensor normal_cdf(const at::Tensor& v) { return 0.5 * (1.0 + at::erf(v * M_SQRT1_2)); }
}  // namespace

GateOutput LogitsGate::forward(const at::Tensor& x, bool training) {
  const int64_t T = num_tasks_, n = num_experts_;
  const bool add_noise = noisy_ && training;
  const bool balance = balance_ != LoadBalance::kNone;
  at::Tensor clean, raw_noise;
  int64_t batch = 1;
  if (per_example_) {
    at::Tensor xd = to_gate_dtype(x, input_dim_, dtype_);
    batch = xd.size(0);
    clean = batched_linear(xd, weight_, bias_);  // [T, B, n]
    if (add_noise) raw_noise = batched_linear(xd, noise_weight_, noise_bias_);
  } else {
    batch = batch_of(x);
    clean = logits_;  // [T, n]
    if (add_noise) raw_noise = noise_logits_.unsqueeze(1);
    // Per-example noise (and per-batch balance sums) need a row per example.
    if (add_noise || balance) clean = clean.unsqueeze(1).expand({T, batch, n});
  }
  at::Tensor logits = clean, noise_std;
  if (add_noise) {
    noise_std = at::softplus(raw_noise) + 1e-2;
    at::Tensor eps = at::randn({T, batch, n}, noise_gen_, at::TensorOptions().dtype(dtype_));
    logits = clean + eps.to(clean.device()) * noise_std;
  }
  at::Tensor weights;
  at::Tensor kept;  // top-(k+1) logits, sorted, when the load estimator needs them
  if (top_k_ == 0 || top_k_ == n) {
    weights = at::softmax(logits, -1);
  } else {
    auto [values, indices] = at::topk(logits, top_k_, -1, /*largest=*/true, /*sorted=*/false);
    // Scattered into zeros: the dropped experts are exactly 0.0.
    weights = at::zeros_like(logits).scatter(-1, indices, at::softmax(values, -1));
    if (add_noise && balance) kept = std::get<0>(at::topk(logits, top_k_ + 1, -1, true, true));
  }
  GateOutput out;
  out.per_example = per_example_;
  out.weights = weights.dim() == 3 ? weights : weights.unsqueeze(1).expand({T, batch, n});
  out.entropy_sum = at::zeros({}, weights.options());
  out.nonpow2_penalty_sum = at::zeros({}, weights.options());
  if (!balance) {
    out.load_balance_loss = at::zeros({}, weights.options());
    return out;
  }
  auto& sums = out.balance;
  sums.examples = batch;
  sums.importance = weights.sum(1);  // [T, n]
  sums.routed_count = weights.detach().ne(0).sum(1);
  sums.prob_sum = at::softmax(logits, -1).sum(1);
  if (kept.defined()) {
    // Shazeer et al. 2017, eq. 8-9: P(x, i) = Phi((clean_i - kth_excluding_i)
    // / noise_std_i), the k-th largest noisy logit other than i: the
    // (k+1)-th if i is in the top k, else the k-th.
    at::Tensor if_in = kept.select(-1, top_k_).unsqueeze(-1);
    at::Tensor if_out = kept.select(-1, top_k_ - 1).unsqueeze(-1);
    at::Tensor is_in = logits > if_in;
    at::Tensor prob = at::where(is_in, normal_cdf((clean - if_in) / noise_std),
                                normal_cdf((clean - if_out) / noise_std));
    sums.load = prob.sum(1);
  } else {
    sums.load = sums.routed_count.to(weights.scalar_type());
  }
  out.load_balance_loss = load_balance_loss(sums, balance_);
  return out;
}

// ---------------------------------------------------------------- make_gate

namespace {
template <typename V>
[[noreturn]] void config_error(const std::string& field, V value, const std::string& what) {
  std::ostringstream msg;
  msg << "config: " << field << " = " << value << " " << what;
  throw UsageError(msg.str());
}
}  // namespace

std::unique_ptr<Gate> make_gate(const proto::GateConfig& config, const GateShape& shape,
                                uint64_t seed, at::ScalarType dtype) {
  if (shape.num_experts < 1)
    config_error("model.num_experts", shape.num_experts, "must be >= 1");
  TORCH_CHECK(shape.num_tasks >= 1, "make_gate: num_tasks must be >= 1, got ", shape.num_tasks);
  if (config.per_example())
    TORCH_CHECK(shape.input_dim >= 1, "make_gate: input_dim must be >= 1, got ", shape.input_dim);
  const bool uses_k = config.type() == proto::GateConfig::DSELECT_K ||
                      config.type() == proto::GateConfig::TOP_K;
  if (uses_k) {
    if (config.k() < 1) config_error("model.gate.k", config.k(), "must be >= 1");
    if (config.k() > shape.num_experts) {
      std::ostringstream what;
      what << "exceeds model.num_experts = " << shape.num_experts;
      config_error("model.gate.k", config.k(), what.str());
    }
  }
  if (dtype != at::kFloat && dtype != at::kDouble)
    throw UsageError(std::string("make_gate: the gate runs in float32 or float64, not ") +
                     c10::toString(dtype));
  if (config.type() != proto::GateConfig::TOP_K) {
    if (config.noisy())
      throw UsageError("config: model.gate.noisy = true needs model.gate.type = TOP_K");
    if (config.load_balance() != proto::GateConfig::NONE)
      throw UsageError("config: model.gate.load_balance = " +
                       proto::GateConfig::LoadBalance_Name(config.load_balance()) +
                       " needs model.gate.type = TOP_K");
  }
  if (config.load_balance() != proto::GateConfig::NONE && !(config.load_balance_coef() >= 0))
    config_error("model.gate.load_balance_coef", config.load_balance_coef(), "must be >= 0");
  if (config.entropy_schedule() != proto::GateConfig::CONSTANT && config.entropy_schedule_steps() < 1)
    config_error("model.gate.entropy_schedule_steps", config.entropy_schedule_steps(), "must be >= 1");
  switch (config.type()) {
    case proto::GateConfig::DSELECT_K:
      // !(x > 0) also rejects NaN.
      if (!(config.gamma() > 0)) config_error("model.gate.gamma", config.gamma(), "must be > 0");
      if (!(config.entropy_reg() >= 0))
        config_error("model.gate.entropy_reg", config.entropy_reg(), "must be >= 0");
      return std::make_unique<DSelectKGate>(shape, config.k(), config.gamma(),
                                            config.per_example(), seed, dtype);
    case proto::GateConfig::TOP_K:
      return std::make_unique<TopKGate>(shape, config.k(), config.per_example(), seed, dtype,
                                        config.noisy(), load_balance_of(config));
    case proto::GateConfig::SOFTMAX:
      return std::make_unique<SoftmaxGate>(shape, config.per_example(), seed, dtype);
  }
  throw UsageError("config: model.gate.type is not a known gate type");
}

}  // namespace dsk::core
