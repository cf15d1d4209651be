// torch binding for wkv5.cu. Holds all the torch code, so the .cu stays plain
// CUDA. Checks shapes, devices, dtypes and contiguity, allocates outputs and
// calls the extern "C" launchers on the caller's CUDA stream.
#include <torch/extension.h>

#include <cstdint>
#include <vector>

#ifndef WKV_N
#define WKV_N 64
#endif

extern "C" int wkv5_forward(int B, int T, int H, const void* r, const void* k, const void* v,
                            const void* lw, const void* s0, void* y, void* sT, void* stream);
extern "C" int wkv5_backward(int B, int T, int H, const void* r, const void* k, const void* v,
                             const void* lw, const void* s0, const void* dy, const void* dsT,
                             void* dr, void* dk, void* dv, void* ds0, void* stream);

namespace {

void check_input(const torch::Tensor& x, const char* name, torch::ScalarType dtype) {
  TORCH_CHECK(x.is_cuda(), "wkv5 cuda: ", name, " must be a CUDA tensor");
  TORCH_CHECK(x.is_contiguous(), "wkv5 cuda: ", name, " must be contiguous");
  TORCH_CHECK(x.scalar_type() == dtype, "wkv5 cuda: ", name, " has dtype ", x.scalar_type(),
              ", this build expects ", dtype);
}

void check_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, "wkv5 cuda: ", what, " launch failed with CUDA error ", err);
}

void* as_stream(int64_t stream) { return reinterpret_cast<void*>(static_cast<intptr_t>(stream)); }

}  // namespace

// r, k, v: (B, T, H, N) in the build's input dtype; lw (H, N) and s0 (B, H, N, N) in the
// accumulation dtype. Returns {y (B, T, H, N), sT (B, H, N, N)} in the accumulation dtype.
std::vector<torch::Tensor> forward(torch::Tensor r, torch::Tensor k, torch::Tensor v,
                                   torch::Tensor lw, torch::Tensor s0, int64_t stream) {
  TORCH_CHECK(r.dim() == 4 && r.size(3) == WKV_N, "wkv5 cuda: r must be (B, T, H, ", WKV_N, ")");
  const auto in = r.scalar_type();
  const auto acc = s0.scalar_type();
  for (auto* p : {&r, &k, &v}) check_input(*p, "r/k/v", in);
  check_input(lw, "lw", acc);
  check_input(s0, "s0", acc);
  const int B = r.size(0), T = r.size(1), H = r.size(2);
  auto y = torch::empty({B, T, H, WKV_N}, s0.options());
  auto sT = torch::empty_like(s0);
  check_launch(wkv5_forward(B, T, H, r.data_ptr(), k.data_ptr(), v.data_ptr(), lw.data_ptr(),
                            s0.data_ptr(), y.data_ptr(), sT.data_ptr(), as_stream(stream)),
               "forward");
  return {y, sT};
}

// Returns {dr, dk, dv, ds0} of the state part, honouring dsT.
std::vector<torch::Tensor> backward(torch::Tensor r, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor lw, torch::Tensor s0, torch::Tensor dy,
                                    torch::Tensor dsT, int64_t stream) {
  const auto in = r.scalar_type();
  const auto acc = s0.scalar_type();
  for (auto* p : {&r, &k, &v}) check_input(*p, "r/k/v", in);
  for (auto* p : {&lw, &s0, &dy, &dsT}) check_input(*p, "lw/s0/dy/dsT", acc);
  const int B = r.size(0), T = r.size(1), H = r.size(2);
  auto dr = torch::empty({B, T, H, WKV_N}, s0.options());
  auto dk = torch::empty_like(dr);
  auto dv = torch::empty_like(dr);
  auto ds0 = torch::empty_like(s0);
  check_launch(wkv5_backward(B, T, H, r.data_ptr(), k.data_ptr(), v.data_ptr(), lw.data_ptr(),
                             s0.data_ptr(), dy.data_ptr(), dsT.data_ptr(), dr.data_ptr(),
                             dk.data_ptr(), dv.data_ptr(), ds0.data_ptr(), as_stream(stream)),
               "backward");
  return {dr, dk, dv, ds0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "wkv5 state part forward (CUDA)");
  m.def("backward", &backward, "wkv5 state part backward (CUDA)");
}
