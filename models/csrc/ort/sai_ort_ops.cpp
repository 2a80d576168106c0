// SPDX-License-Identifier: Apache-2.0
//
// libsai_ort_ops.so: the ONNX Runtime custom-op library of the sai ops (domain "sai", version 1):
// SparseSampleConv (3, 4 or 5 inputs: X, M, W [, B [, Offset]]; groups, strides, dilations, pads,
// deformable conv v1, activation) and Interpolate, docs/design.md 3.2 / 3.3, float32 and float16 (fp16
// storage, fp32 math), and SparseBlock, a whole sparse block on the fused NHWC kernel of
// sai_cpu_blocks.h (float32; put in by sai.runtime.ort_fuse, see below), CPU execution provider. The kernels are the ones of the PyTorch extension (models/csrc/sai_cpu_kernels.h), run
// here on ONNX Runtime's intra-op thread pool with OpenBLAS (PyPI's scipy-openblas32) for the GEMM.
//
//   so = onnxruntime.SessionOptions(); so.register_custom_ops_library(path)
//
// A registered custom op takes precedence over the model-local function of the same domain and
// op_type (the portable model's fallback body), so the same model.onnx runs either way.
//
// Attributes are validated when ONNX Runtime creates the kernel (session creation): a node whose
// attributes (or static input shapes) the kernel cannot run fails InferenceSession(...) with an
// error naming the op, the node and the attribute. Shape mismatches that only show at run time are
// an error status from Run naming the node, never a crash.
//
// Only RegisterCustomOps is exported (sai_ort_ops.map). Built by `python -m sai.models.build_ort_ops`
// (the Makefile's install step) against ONNX Runtime's C/C++ API headers.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "sai_cpu_blocks.h"
#include "sai_cpu_kernels.h"

namespace {

const OrtApi* g_api = nullptr;

constexpr const char* kDomain = "sai";

// The kernels' Backend on ONNX Runtime: the session's intra-op pool (KernelContext_ParallelFor) and
// single-threaded OpenBLAS sgemm on blocks of the output, so every thread is one of the session's.
struct OrtBackend {
  const OrtKernelContext* ctx;

  template <class F>
  struct Closure {
    const F* f;
    int64_t begin, end, block;
  };

  template <class F>
  static void thunk(void* user, size_t i) {
    auto* c = static_cast<Closure<F>*>(user);
    const int64_t s = c->begin + static_cast<int64_t>(i) * c->block;
    (*c->f)(s, std::min(c->end, s + c->block));
  }

  template <class F>
  void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) const {
    const int64_t n = end - begin;
    if (n <= 0) return;
    // at most two tasks per core: the work items here are uniform, and every task is a wake-up
    const int64_t max_tasks = 2 * cores();
    const int64_t block = std::max<int64_t>(std::max<int64_t>(grain, 1), (n + max_tasks - 1) / max_tasks);
    const int64_t tasks = (n + block - 1) / block;
    if (tasks <= 1) {
      f(begin, end);
      return;
    }
    Closure<F> c{&f, begin, end, block};
    OrtStatus* st = g_api->KernelContext_ParallelFor(ctx, &thunk<F>, static_cast<size_t>(tasks), 0, &c);
    if (st != nullptr) {  // no pool: run it here
      g_api->ReleaseStatus(st);
      for (int64_t i = 0; i < tasks; ++i) thunk<F>(&c, static_cast<size_t>(i));
    }
  }

  int64_t threads() const { return cores(); }

  static int64_t cores() {
    static const int64_t n = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
    return n;
  }

  // f(i) for i in [0, tasks), one task each.
  template <class F>
  void blocked(int64_t tasks, const F& f) const {
    struct C {
      const F* f;
    } c{&f};
    auto th = [](void* u, size_t i) { (*static_cast<C*>(u)->f)(static_cast<int64_t>(i)); };
    OrtStatus* st = tasks > 1 ? g_api->KernelContext_ParallelFor(ctx, th, static_cast<size_t>(tasks),
                                                                 static_cast<size_t>(tasks), &c)
                              : nullptr;
    if (tasks <= 1 || st != nullptr) {
      if (st != nullptr) g_api->ReleaseStatus(st);
      for (int64_t i = 0; i < tasks; ++i) f(i);
    }
  }

  void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
            int64_t ldc) const {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.F);
      return;
    }
    auto run = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
      scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(m1 - m0),
                        static_cast<blasint>(n1 - n0), static_cast<blasint>(K), 1.F, A + m0 * lda,
                        static_cast<blasint>(lda), B + n0, static_cast<blasint>(ldb), 0.F, C + m0 * ldc + n0,
                        static_cast<blasint>(ldc));
    };
    // Split the larger output dimension into one block per core, each >= 128 wide (each block packs
    // its slice of the larger operand and all of the smaller one, so few large blocks); small
    // products run in one call.
    if (static_cast<double>(M) * N * K < 4e6) {
      run(0, M, 0, N);
      return;
    }
    const int64_t dim = std::max(M, N), blocks = std::max<int64_t>(1, std::min<int64_t>(dim / 128, cores()));
    const int64_t block = (dim + blocks - 1) / blocks;
    blocked(blocks, [&](int64_t i) {
      const int64_t b = i * block, e = std::min(dim, b + block);
      if (b >= e) return;
      if (N >= M) {
        run(0, M, b, e);
      } else {
        run(b, e, 0, N);
      }
    });
  }
};

// ---- element types: float32, and float16 storage with float32 math (docs/design.md: fp16 models) ----

template <typename T>
struct ElemType;
template <>
struct ElemType<float> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
};
template <>
struct ElemType<Ort::Float16_t> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
};

// The tensor's data as float: itself for float32, converted into `buf` for float16.
template <typename T>
const float* as_float(const OrtBackend& be, const Ort::ConstValue& v, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    return v.GetTensorData<float>();
  } else {
    const int64_t n = static_cast<int64_t>(v.GetTensorTypeAndShapeInfo().GetElementCount());
    const T* src = v.GetTensorData<T>();
    buf.resize(static_cast<size_t>(n));
    be.parallel_for(0, n, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) buf[i] = src[i].ToFloat();
    });
    return buf.data();
  }
}

// Where a kernel writes its float results: the output itself for float32, `buf` (stored into the
// float16 output afterwards by `store`) for float16.
template <typename T>
float* output_floats(Ort::UnownedValue& y, int64_t n, std::vector<float>& buf) {
  if constexpr (std::is_same_v<T, float>) {
    return y.GetTensorMutableData<float>();
  } else {
    buf.resize(static_cast<size_t>(n));
    return buf.data();
  }
}

template <typename T>
void store(const OrtBackend& be, const float* src, T* dst, int64_t n) {
  if constexpr (!std::is_same_v<T, float>) {
    be.parallel_for(0, n, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = T(src[i]);
    });
  }
}

// ---- errors ---------------------------------------------------------------------------------------

struct NodeError {
  std::string message;
};

// A string the API writes in two calls (size, then data) through `get`; trailing NULs dropped.
// Returns false when either call fails.
template <class Get>
bool read_string(Get get, std::string& out) {
  size_t size = 0;
  OrtStatus* st = get(nullptr, &size);
  if (st == nullptr) {
    out.assign(size, '\0');
    st = get(&out[0], &size);
  }
  if (st != nullptr) {
    g_api->ReleaseStatus(st);
    return false;
  }
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return true;
}

std::string node_name(const OrtKernelInfo* info) {
  std::string name;
  const bool ok = read_string([&](char* d, size_t* n) { return g_api->KernelInfo_GetNodeName(info, d, n); }, name);
  return ok ? name : "?";
}

std::string where(const char* op, const std::string& node) {
  return std::string("sai::") + op + " node '" + node + "': ";
}

OrtStatusPtr make_status(OrtErrorCode code, const std::string& msg) { return g_api->CreateStatus(code, msg.c_str()); }

// Runs `f` (returning an OrtStatusPtr) and turns what it throws into a status: a NodeError as
// ORT_INVALID_ARGUMENT with its message (it names the node and the attribute or input), anything else
// as `other` prefixed with `w` (the op and node).
template <class F>
OrtStatusPtr guarded(const std::string& w, OrtErrorCode other, F&& f) {
  try {
    return f();
  } catch (const NodeError& e) {
    return make_status(ORT_INVALID_ARGUMENT, e.message);
  } catch (const std::exception& e) {  // Ort::Exception included
    return make_status(other, w + e.what());
  }
}

// Missing attributes come back as ORT_FAIL "No attribute with name ..."; anything else (a wrong
// type) is reported as such.
bool is_missing(OrtStatus* st) {
  const std::string m = g_api->GetErrorMessage(st);
  return m.find("No attribute") != std::string::npos || m.find("not found") != std::string::npos;
}

std::string join(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

// The status of reading attribute `name`: true when the node does not carry it (the caller uses its
// default); throws NodeError naming the node and the attribute when it has another type.
bool attr_absent(OrtStatus* st, const std::string& w, const char* name, const char* type) {
  if (st == nullptr) return false;
  const bool missing = is_missing(st);
  g_api->ReleaseStatus(st);
  if (missing) return true;
  throw NodeError{w + "attribute '" + name + "' must be " + type};
}

// An INT or FLOAT attribute through `get` (the OrtApi getter of its type), or `fallback` when the node
// does not carry it; throws NodeError on a wrong type.
template <typename V, typename Get>
V attr_scalar(const OrtKernelInfo* info, const std::string& w, const char* name, V fallback, Get get, const char* type) {
  V v{};
  return attr_absent(get(info, name, &v), w, name, type) ? fallback : v;
}

int64_t attr_int(const OrtKernelInfo* info, const std::string& w, const char* name, int64_t fallback) {
  return attr_scalar(info, w, name, fallback, g_api->KernelInfoGetAttribute_int64, "an int (INT)");
}

float attr_float(const OrtKernelInfo* info, const std::string& w, const char* name, float fallback) {
  return attr_scalar(info, w, name, fallback, g_api->KernelInfoGetAttribute_float, "a float (FLOAT)");
}

// An INTS attribute, or `fallback` when the node does not carry it; throws NodeError on a wrong type.
std::vector<int64_t> attr_ints(const OrtKernelInfo* info, const std::string& w, const char* name,
                               std::vector<int64_t> fallback) {
  constexpr const char* kType = "a list of ints (INTS)";
  size_t size = 0;
  if (attr_absent(g_api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size), w, name, kType)) {
    return fallback;
  }
  std::vector<int64_t> out(size);
  if (size > 0) {
    OrtStatus* st = g_api->KernelInfoGetAttributeArray_int64(info, name, out.data(), &size);
    if (st != nullptr) {
      g_api->ReleaseStatus(st);
      throw NodeError{w + "attribute '" + name + "' must be " + kType};
    }
  }
  return out;
}

// An INTS attribute of exactly `count` values, each >= `lo` (`fallback` when absent); throws NodeError
// naming the node, the attribute and what it holds otherwise.
std::vector<int64_t> attr_ints_checked(const OrtKernelInfo* info, const std::string& w, const char* name,
                                       std::vector<int64_t> fallback, size_t count, int64_t lo, const char* what) {
  std::vector<int64_t> v = attr_ints(info, w, name, std::move(fallback));
  if (v.size() != count || std::any_of(v.begin(), v.end(), [lo](int64_t x) { return x < lo; })) {
    throw NodeError{w + "attribute '" + name + "' must be " + what + ", got " + join(v)};
  }
  return v;
}

std::string attr_string(const OrtKernelInfo* info, const std::string& w, const char* name, const char* fallback) {
  constexpr const char* kType = "a string (STRING)";
  size_t size = 0;
  if (attr_absent(g_api->KernelInfoGetAttribute_string(info, name, nullptr, &size), w, name, kType)) return fallback;
  std::string out;
  if (!read_string([&](char* d, size_t* n) { return g_api->KernelInfoGetAttribute_string(info, name, d, n); }, out)) {
    throw NodeError{w + "attribute '" + name + "' must be " + kType};
  }
  return out;
}

// The number of inputs the node has (0 when unknown).
size_t input_count(const OrtKernelInfo* info) {
  size_t count = 0;
  OrtStatus* st = g_api->KernelInfo_GetInputCount(info, &count);
  if (st != nullptr) {
    g_api->ReleaseStatus(st);
    return 0;
  }
  return count;
}

// The static shape of input `i` as the graph declares it (-1 for symbolic dims); empty when unknown.
std::vector<int64_t> static_shape(const OrtKernelInfo* info, size_t i) {
  if (i >= input_count(info)) return {};
  try {
    Ort::ConstKernelInfo ki(info);
    Ort::TypeInfo ti = ki.GetInputTypeInfo(i);
    if (ti.GetONNXType() != ONNX_TYPE_TENSOR) return {};
    return ti.GetTensorTypeAndShapeInfo().GetShape();
  } catch (const std::exception&) {
    return {};
  }
}

// ---- SparseSampleConv -----------------------------------------------------------------------------

struct ConvAttrs {
  int64_t strides[2]{1, 1};
  int64_t pads[4]{0, 0, 0, 0};
  int64_t dilations[2]{1, 1};
  int64_t group{1};
  int64_t deform_groups{1};
  int32_t activation{sai::kSAI_ACT_NONE};
};

// Reads and checks every attribute by name, type, length and range; throws NodeError.
ConvAttrs read_conv_attrs(const OrtKernelInfo* info, const std::string& w) {
  ConvAttrs a;
  const std::vector<int64_t> strides = attr_ints_checked(info, w, "strides", {1, 1}, 2, 1, "2 ints >= 1");
  const std::vector<int64_t> pads =
      attr_ints_checked(info, w, "pads", {0, 0, 0, 0}, 4, 0, "4 ints >= 0 (top, left, bottom, right)");
  const std::vector<int64_t> dil = attr_ints_checked(info, w, "dilations", {1, 1}, 2, 1, "2 ints >= 1");
  a.group = attr_int(info, w, "group", 1);
  if (a.group < 1) throw NodeError{w + "attribute 'group' must be >= 1, got " + std::to_string(a.group)};
  a.deform_groups = attr_int(info, w, "deform_groups", 1);
  if (a.deform_groups < 1) {
    throw NodeError{w + "attribute 'deform_groups' must be >= 1, got " + std::to_string(a.deform_groups)};
  }
  const std::string act = attr_string(info, w, "activation", "none");
  a.activation = sai::saiActivationFromString(act.c_str());
  if (a.activation < 0) throw NodeError{w + "attribute 'activation' must be \"none\" or \"relu\", got \"" + act + "\""};
  constexpr int64_t kMax = 1 << 20;  // the kernels index in int32 fields
  for (int64_t v : {strides[0], strides[1], dil[0], dil[1], pads[0], pads[1], pads[2], pads[3], a.group,
                    a.deform_groups}) {
    if (v > kMax) throw NodeError{w + "attribute value " + std::to_string(v) + " is out of range"};
  }
  std::copy(strides.begin(), strides.end(), a.strides);
  std::copy(pads.begin(), pads.end(), a.pads);
  std::copy(dil.begin(), dil.end(), a.dilations);

  // What the graph declares statically: the attributes must fit the inputs.
  const size_t n_in = input_count(info);
  const std::vector<int64_t> xs = static_shape(info, 0), ws = static_shape(info, 2);
  if (!xs.empty() && xs.size() != 4) throw NodeError{w + "input X must be 4-D [N,C,H,W], got rank " + std::to_string(xs.size())};
  if (!ws.empty()) {
    if (ws.size() != 4) throw NodeError{w + "input W must be 4-D [Cout,C/group,kh,kw], got rank " + std::to_string(ws.size())};
    if (ws[0] > 0 && ws[0] % a.group != 0) {
      throw NodeError{w + "attribute 'group' (" + std::to_string(a.group) + ") must divide W's Cout (" +
                      std::to_string(ws[0]) + ")"};
    }
    if (!xs.empty() && xs[1] > 0 && ws[1] > 0 && ws[1] * a.group != xs[1]) {
      throw NodeError{w + "attribute 'group' (" + std::to_string(a.group) + ") does not fit X's " +
                      std::to_string(xs[1]) + " channels and W's " + std::to_string(ws[1]) + " per group"};
    }
  }
  if (!xs.empty() && xs[1] > 0 && xs[1] % a.deform_groups != 0) {
    throw NodeError{w + "attribute 'deform_groups' (" + std::to_string(a.deform_groups) + ") must divide X's " +
                    std::to_string(xs[1]) + " channels"};
  }
  if (n_in >= 5) {
    const std::vector<int64_t> os = static_shape(info, 4);
    if (!os.empty() && os.size() == 4 && os[1] > 0 && ws.size() == 4 && ws[2] > 0 && ws[3] > 0 &&
        os[1] != 2 * a.deform_groups * ws[2] * ws[3]) {
      throw NodeError{w + "attribute 'deform_groups' (" + std::to_string(a.deform_groups) + ") does not fit Offset's " +
                      std::to_string(os[1]) + " channels (2 * deform_groups * kh * kw = " +
                      std::to_string(2 * a.deform_groups * ws[2] * ws[3]) + ")"};
    }
  }  // without an Offset deform_groups has no meaning, but it must still divide C (checked above)
  return a;
}

template <typename T>
struct SparseSampleConvKernel {
  std::string node, w;
  ConvAttrs a;
  // W as the NHWC path's GEMM operand, computed once when W is a constant initializer (float32)
  std::vector<float> w_nhwc;
  std::vector<int64_t> w_nhwc_shape;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(w, ORT_RUNTIME_EXCEPTION, [&] { return compute(context); });
  }

  OrtStatusPtr compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const size_t n_in = ctx.GetInputCount();
    Ort::ConstValue X = ctx.GetInput(0), M = ctx.GetInput(1), Wt = ctx.GetInput(2);
    Ort::ConstValue B{nullptr}, Off{nullptr};
    if (n_in > 3) B = ctx.GetInput(3);
    if (n_in > 4) Off = ctx.GetInput(4);
    const std::vector<int64_t> xs = X.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> ms = M.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> ws = Wt.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.size() != 4) throw NodeError{w + "X must be 4-D [N,C,H,W], got " + join(xs)};
    if (ws.size() != 4) throw NodeError{w + "W must be 4-D [Cout,C/group,kh,kw], got " + join(ws)};
    constexpr int64_t kMax = 1LL << 30;
    for (int64_t v : xs) {
      if (v > kMax) throw NodeError{w + "X is too large: " + join(xs)};
    }
    sai::SaiConvParams p = sai::saiConvParamsOf(xs.data(), ws.data(), a.strides, a.pads, a.dilations, a.group,
                                                a.deform_groups, a.activation);
    if (p.N == 0) {
      // empty batch: an empty output (Ho, Wo from a batch-1 view of the same shapes)
      sai::SaiConvParams q = p;
      q.N = 1;
      if (!sai::saiConvFinalize(q)) throw NodeError{w + "X " + join(xs) + " and W " + join(ws) + " do not fit"};
      ctx.GetOutput(0, {0, p.Cout, q.Ho, q.Wo});
      return nullptr;
    }
    if (!sai::saiConvFinalize(p) || ws[1] != p.cinPerGroup) {
      throw NodeError{w + "X " + join(xs) + " and W " + join(ws) + " do not fit the attributes (group " +
                      std::to_string(a.group) + ", deform_groups " + std::to_string(a.deform_groups) + ")"};
    }
    const std::vector<int64_t> want_m{p.N, 1, p.Ho, p.Wo};
    if (ms != want_m) throw NodeError{w + "M must be " + join(want_m) + ", got " + join(ms)};
    OrtBackend be{context};
    std::vector<float> xbuf, mbuf, wbuf, bbuf, obuf, ybuf;
    const float* bias = nullptr;
    if (B) {
      const std::vector<int64_t> bs = B.GetTensorTypeAndShapeInfo().GetShape();
      if (bs != std::vector<int64_t>{p.Cout}) throw NodeError{w + "B must be [" + std::to_string(p.Cout) + "], got " + join(bs)};
      bias = as_float<T>(be, B, bbuf);
    }
    const float* offset = nullptr;
    if (Off) {
      const std::vector<int64_t> os = Off.GetTensorTypeAndShapeInfo().GetShape();
      const std::vector<int64_t> want{p.N, 2LL * p.deformGroups * p.kernelTaps, p.Ho, p.Wo};
      if (os != want) throw NodeError{w + "Offset must be " + join(want) + ", got " + join(os)};
      offset = as_float<T>(be, Off, obuf);
    }
    Ort::UnownedValue Y = ctx.GetOutput(0, {p.N, p.Cout, p.Ho, p.Wo});
    const int64_t n_out = static_cast<int64_t>(p.N) * p.Cout * p.Ho * p.Wo;
    float* out = output_floats<T>(Y, n_out, ybuf);
    be.parallel_for(0, n_out, 1 << 16, [&](int64_t b, int64_t e) { std::memset(out + b, 0, sizeof(float) * (e - b)); });
    const float* xf = as_float<T>(be, X, xbuf);
    const float* wf = as_float<T>(be, Wt, wbuf);
    const float* mf = as_float<T>(be, M, mbuf);
    if (p.kernelTaps == 1 && offset == nullptr) {
      // 1x1: the NCHW gather reads each input plane once, as a transpose would
      sai_cpu::sparse_sample_conv(be, p, false, xf, mf, wf, bias, offset, out);
    } else {
      // kxk / deformable: X to NHWC once, then contiguous channel runs per tap (the NHWC kernel path)
      static thread_local sai_cpu::FloatBuffer xt_buf;  // reused: no page faults per call
      float* xt = xt_buf.get(static_cast<int64_t>(p.N) * p.C * p.H * p.W);
      const int64_t C = p.C, H = p.H, Wd = p.W;
      be.parallel_for(0, static_cast<int64_t>(p.N) * H, 1, [&](int64_t b, int64_t e) {
        for (int64_t nh = b; nh < e; ++nh) {
          const int64_t n = nh / H, y = nh % H;
          float* dst = xt + nh * Wd * C;
          for (int64_t c = 0; c < C; ++c) {
            const float* src = xf + ((n * C + c) * H + y) * Wd;
            for (int64_t x = 0; x < Wd; ++x) dst[x * C + c] = src[x];
          }
        }
      });
      std::vector<float> wop_local;
      const float* wop = nullptr;
      if (!w_nhwc.empty() && w_nhwc_shape == ws) {
        wop = w_nhwc.data();
      } else {
        wop_local = sai_cpu::weight_nhwc_operand(p, wf);
        wop = wop_local.data();
      }
      sai_cpu::sparse_sample_conv(be, p, true, xt, mf, wop, bias, offset, out, /*out_nchw=*/true);
    }
    store<T>(be, out, Y.GetTensorMutableData<T>(), n_out);
    return nullptr;
  }
};

template <typename T>
struct SparseSampleConvOp : Ort::CustomOpBase<SparseSampleConvOp<T>, SparseSampleConvKernel<T>, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    const std::string node = node_name(info);
    const std::string w = where("SparseSampleConv", node);
    return guarded(w, ORT_FAIL, [&]() -> OrtStatusPtr {
      auto* k = new SparseSampleConvKernel<T>{node, w, read_conv_attrs(info, w), {}, {}};
      precompute_weight(info, k);
      *kernel = k;
      return nullptr;
    });
  }
  // A constant float32 W (an initializer) is laid out for the NHWC path once, here.
  static void precompute_weight(const OrtKernelInfo* info, SparseSampleConvKernel<T>* k) {
    if constexpr (std::is_same_v<T, float>) {
      int is_constant = 0;
      const OrtValue* value = nullptr;
      OrtStatus* st = g_api->KernelInfoGetConstantInput_tensor(info, 2, &is_constant, &value);
      if (st != nullptr) {
        g_api->ReleaseStatus(st);
        return;
      }
      if (!is_constant || value == nullptr) return;
      Ort::ConstValue v{value};
      const std::vector<int64_t> ws = v.GetTensorTypeAndShapeInfo().GetShape();
      if (ws.size() != 4 || ws[0] < 1 || ws[1] < 1 || ws[0] % k->a.group != 0 || ws[2] * ws[3] == 1) return;
      sai::SaiConvParams p;
      p.groups = static_cast<int32_t>(k->a.group);
      p.cinPerGroup = static_cast<int32_t>(ws[1]);
      p.coutPerGroup = static_cast<int32_t>(ws[0] / k->a.group);
      p.kernelTaps = static_cast<int32_t>(ws[2] * ws[3]);
      k->w_nhwc = sai_cpu::weight_nhwc_operand(p, v.GetTensorData<float>());
      k->w_nhwc_shape = ws;
    }
  }
  const char* GetName() const { return "SparseSampleConv"; }
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ElemType<T>::value; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < 3 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ElemType<T>::value; }
};

// ---- Interpolate ----------------------------------------------------------------------------------

template <typename T>
struct InterpolateKernel {
  std::string node, w;
  int32_t kernel_size{7};
  float sigma{1.F}, eps{1e-5F};

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(w, ORT_RUNTIME_EXCEPTION, [&] { return compute(context); });
  }

  OrtStatusPtr compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue F = ctx.GetInput(0), M = ctx.GetInput(1);
    const std::vector<int64_t> fs = F.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> ms = M.GetTensorTypeAndShapeInfo().GetShape();
    if (fs.size() != 4) throw NodeError{w + "F must be 4-D [N,C,H,W], got " + join(fs)};
    for (int64_t v : fs) {
      if (v > (1LL << 30)) throw NodeError{w + "F is too large: " + join(fs)};
    }
    const std::vector<int64_t> want_m{fs[0], 1, fs[2], fs[3]};
    if (ms != want_m) throw NodeError{w + "M must be " + join(want_m) + ", got " + join(ms)};
    Ort::UnownedValue Y = ctx.GetOutput(0, fs);
    if (fs[0] == 0 || fs[1] == 0 || fs[2] == 0 || fs[3] == 0) return nullptr;
    sai::SaiInterpParams p;
    p.N = static_cast<int32_t>(fs[0]);
    p.C = static_cast<int32_t>(fs[1]);
    p.H = static_cast<int32_t>(fs[2]);
    p.W = static_cast<int32_t>(fs[3]);
    p.kernelSize = kernel_size;
    p.sigma = sigma;
    p.eps = eps;
    if (!sai::saiInterpParamsValid(p)) throw NodeError{w + "invalid parameters for F " + join(fs)};
    OrtBackend be{context};
    std::vector<float> fbuf, mbuf, ybuf;
    const int64_t n_out = fs[0] * fs[1] * fs[2] * fs[3];
    float* out = output_floats<T>(Y, n_out, ybuf);
    sai_cpu::interpolate(be, p, false, as_float<T>(be, F, fbuf), as_float<T>(be, M, mbuf), out);
    store<T>(be, out, Y.GetTensorMutableData<T>(), n_out);
    return nullptr;
  }
};

template <typename T>
struct InterpolateOp : Ort::CustomOpBase<InterpolateOp<T>, InterpolateKernel<T>, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    const std::string node = node_name(info);
    const std::string w = where("Interpolate", node);
    return guarded(w, ORT_FAIL, [&]() -> OrtStatusPtr {
      const int64_t ks = attr_int(info, w, "kernel_size", 7);
      if (ks < 1 || ks % 2 == 0 || ks > sai::kSAI_MAX_INTERP_KERNEL) {
        throw NodeError{w + "attribute 'kernel_size' must be odd, 1.." + std::to_string(sai::kSAI_MAX_INTERP_KERNEL) +
                        ", got " + std::to_string(ks)};
      }
      const float sigma = attr_float(info, w, "sigma", 1.F);
      if (!std::isfinite(sigma)) throw NodeError{w + "attribute 'sigma' must be finite, got " + std::to_string(sigma)};
      const float eps = attr_float(info, w, "eps", 1e-5F);
      if (!std::isfinite(eps) || eps < 0.F) {
        throw NodeError{w + "attribute 'eps' must be finite and >= 0, got " + std::to_string(eps)};
      }
      const std::vector<int64_t> fs = static_shape(info, 0);
      if (!fs.empty() && fs.size() != 4) {
        throw NodeError{w + "input F must be 4-D [N,C,H,W], got rank " + std::to_string(fs.size())};
      }
      auto* k = new InterpolateKernel<T>{node, w, static_cast<int32_t>(ks), sigma, eps};
      *kernel = k;
      return nullptr;
    });
  }
  const char* GetName() const { return "Interpolate"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ElemType<T>::value; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ElemType<T>::value; }
};

// ---- SparseBlock ----------------------------------------------------------------------------------
//
// One whole non-deformable sparse residual block (docs/design.md 3.4), float32, NHWC in and out: the
// fused kernel of sai_cpu_blocks.h on the GEMM of sai_cpu_gemm.h. Not an op of the exported model:
// sai.runtime.ort_fuse puts one in for each block's SparseSampleConv/Interpolate chain (+ tail and
// downsample conv) when this library is registered. Inputs (an empty tensor: absent):
//   0 X [N,H,W,C]   1 M1 [N,1,Ha,Wa]   2 M2 [N,1,Ho,Wo]
//   3 WA [Cm,C,ka,ka]  4 BA [Cm]  5 WB [Cb,Cm,kb,kb]  6 BB [Cb]  7 WC [Cout,Cb,1,1]  8 TAIL_BIAS [Cout]
//   9 WD [Cout,C,1,1]  10 BD [Cout]  11 WO [2*DG*kb*kb,C,ko,ko]  12 BO [2*DG*kb*kb] (deformable conv_b)
// Attributes: stride_a, stride_b, relu_b, down_stride, offset_stride, sigma1, sigma2, kernel_size, eps.
// Output: Y [N,Ho,Wo,Cout]. The weights (3..12) must be constant initializers: they are packed once,
// when the session creates the kernel.

constexpr size_t kBlockInputs = 13;
const char* const kBlockInputNames[kBlockInputs] = {"X",  "M1",        "M2", "WA", "BA", "WB", "BB",
                                                    "WC", "TAIL_BIAS", "WD", "BD", "WO", "BO"};

struct SparseBlockKernel {
  std::string node, w;
  sai_cpu::BlockSpec spec;
  sai_cpu::BlockWeights weights;
  int64_t ka = 1, kb = 3, C = 0;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(w, ORT_RUNTIME_EXCEPTION, [&] { return compute(context); });
  }

  OrtStatusPtr compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue X = ctx.GetInput(0), M1 = ctx.GetInput(1), M2 = ctx.GetInput(2);
    const std::vector<int64_t> xs = X.GetTensorTypeAndShapeInfo().GetShape();
    if (xs.size() != 4 || xs[3] != C) {
      throw NodeError{w + "X must be NHWC [N,H,W," + std::to_string(C) + "], got " + join(xs)};
    }
    for (int64_t v : xs) {
      if (v > (1LL << 30)) throw NodeError{w + "X is too large: " + join(xs)};
    }
    sai_cpu::BlockGeometry g;
    const std::string why = sai_cpu::block_geometry(xs[0], xs[3], xs[1], xs[2], spec, weights, ka, kb, g);
    if (!why.empty()) throw NodeError{w + "X " + join(xs) + ": " + why};
    const std::vector<int64_t> m1s = M1.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> m2s = M2.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> want1{xs[0], 1, g.ga.Ho, g.ga.Wo}, want2{xs[0], 1, g.gb.Ho, g.gb.Wo};
    if (m1s != want1) throw NodeError{w + "M1 must be " + join(want1) + ", got " + join(m1s)};
    if (m2s != want2) throw NodeError{w + "M2 must be " + join(want2) + ", got " + join(m2s)};
    Ort::UnownedValue Y = ctx.GetOutput(0, {xs[0], g.gb.Ho, g.gb.Wo, g.Cout});
    if (xs[0] == 0 || xs[1] == 0 || xs[2] == 0 || C == 0) return nullptr;
    OrtBackend be{context};
    sai_cpu::sparse_block_nhwc(be, g, spec, weights, X.GetTensorData<float>(), M1.GetTensorData<float>(),
                               M2.GetTensorData<float>(), Y.GetTensorMutableData<float>());
    return nullptr;
  }
};

struct SparseBlockOp : Ort::CustomOpBase<SparseBlockOp, SparseBlockKernel, true> {
  // The constant input `i` (its shape and data), or a NodeError naming it.
  static Ort::ConstValue constant(const OrtKernelInfo* info, const std::string& w, size_t i) {
    int is_constant = 0;
    const OrtValue* value = nullptr;
    OrtStatus* st = g_api->KernelInfoGetConstantInput_tensor(info, i, &is_constant, &value);
    if (st != nullptr) g_api->ReleaseStatus(st);
    if (st != nullptr || !is_constant || value == nullptr) {
      throw NodeError{w + "input " + std::to_string(i) + " (" + kBlockInputNames[i] +
                      ") must be a constant initializer"};
    }
    return Ort::ConstValue{value};
  }

  static std::vector<int64_t> shape_of(const Ort::ConstValue& v) { return v.GetTensorTypeAndShapeInfo().GetShape(); }

  // A conv weight input [co, ci, k, k] (k odd; 0 elements: absent when `optional`), packed into `out`;
  // returns k (0 when absent).
  static int64_t conv_weight(const OrtKernelInfo* info, const std::string& w, size_t i, bool optional,
                             sai_cpu::PackedB& out, int64_t* co, int64_t* ci) {
    Ort::ConstValue v = constant(info, w, i);
    const std::vector<int64_t> s = shape_of(v);
    const int64_t count = static_cast<int64_t>(v.GetTensorTypeAndShapeInfo().GetElementCount());
    if (optional && count == 0) return 0;
    if (s.size() != 4 || s[2] != s[3] || s[2] % 2 == 0 || s[0] < 1 || s[1] < 1) {
      throw NodeError{w + "input " + std::to_string(i) + " (" + kBlockInputNames[i] +
                      ") must be a conv weight [Cout, Cin, k, k] with k odd, got " + join(s)};
    }
    sai_cpu::pack_conv_weight(v.GetTensorData<float>(), s[0], s[1], s[2], s[3], out);
    *co = s[0], *ci = s[1];
    return s[2];
  }

  static std::vector<float> vector_input(const OrtKernelInfo* info, const std::string& w, size_t i) {
    Ort::ConstValue v = constant(info, w, i);
    const size_t count = v.GetTensorTypeAndShapeInfo().GetElementCount();
    const float* d = v.GetTensorData<float>();
    return std::vector<float>(d, d + count);
  }

  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    const std::string node = node_name(info);
    const std::string w = where("SparseBlock", node);
    return guarded(w, ORT_FAIL, [&]() -> OrtStatusPtr {
      if (input_count(info) != kBlockInputs) {
        throw NodeError{w + "takes " + std::to_string(kBlockInputs) + " inputs (empty tensors for absent ones), got " +
                        std::to_string(input_count(info))};
      }
      auto k = std::make_unique<SparseBlockKernel>();
      k->node = node, k->w = w;
      sai_cpu::BlockSpec& s = k->spec;
      auto positive = [&](const char* name) {
        const int64_t v = attr_int(info, w, name, 1);
        if (v < 1) throw NodeError{w + "attribute '" + name + "' must be >= 1, got " + std::to_string(v)};
        return v;
      };
      s.sa = positive("stride_a");
      s.sb = positive("stride_b");
      s.down_stride = positive("down_stride");
      s.offset_stride = positive("offset_stride");
      const int64_t relu_b = attr_int(info, w, "relu_b", 1);
      if (relu_b != 0 && relu_b != 1) throw NodeError{w + "attribute 'relu_b' must be 0 or 1, got " + std::to_string(relu_b)};
      s.relu_b = relu_b == 1;
      s.kernel_size = attr_int(info, w, "kernel_size", 7);
      s.sigma1 = attr_float(info, w, "sigma1", 1.F);
      s.sigma2 = attr_float(info, w, "sigma2", 1.F);
      s.eps = attr_float(info, w, "eps", 1e-5F);
      sai::SaiInterpParams ip;
      ip.kernelSize = static_cast<int32_t>(s.kernel_size);
      ip.eps = s.eps;
      for (const auto& [name, sigma] : {std::pair<const char*, float>{"sigma1", s.sigma1}, {"sigma2", s.sigma2}}) {
        ip.sigma = sigma;
        if (!std::isfinite(sigma)) throw NodeError{w + "attribute '" + name + "' must be finite, got " + std::to_string(sigma)};
        if (!sai::saiInterpParamsValid(ip)) {
          throw NodeError{w + "attribute 'kernel_size' must be odd, 1.." + std::to_string(sai::kSAI_MAX_INTERP_KERNEL) +
                          " and 'eps' finite and >= 0, got " + std::to_string(s.kernel_size) + ", " + std::to_string(s.eps)};
        }
      }
      const std::vector<int64_t> xs = static_shape(info, 0);
      if (!xs.empty() && xs.size() != 4) throw NodeError{w + "input X must be 4-D NHWC, got rank " + std::to_string(xs.size())};
      sai_cpu::BlockWeights& wt = k->weights;
      int64_t cm = 0, cin = 0, cb = 0, cm2 = 0, cout = 0, cb2 = 0, cd = 0, cdin = 0;
      k->ka = conv_weight(info, w, 3, false, wt.wa, &cm, &cin);
      k->kb = conv_weight(info, w, 5, false, wt.wb, &cb, &cm2);
      if (cm2 != cm) throw NodeError{w + "WB takes " + std::to_string(cm2) + " channels, WA gives " + std::to_string(cm)};
      const bool has_c = conv_weight(info, w, 7, true, wt.wc, &cout, &cb2) != 0;
      if (has_c && (cb2 != cb || wt.wc.K != cb)) {
        throw NodeError{w + "WC must be [Cout, " + std::to_string(cb) + ", 1, 1]"};
      }
      const bool has_d = conv_weight(info, w, 9, true, wt.wd, &cd, &cdin) != 0;
      if (has_d && (cdin != cin || wt.wd.K != cin)) {
        throw NodeError{w + "WD must be [Cout, " + std::to_string(cin) + ", 1, 1]"};
      }
      int64_t co = 0, coin = 0;
      wt.ko = conv_weight(info, w, 11, true, wt.wo, &co, &coin);
      if (wt.ko != 0 && (coin != cin || co % (2 * k->kb * k->kb) != 0 || cm % (co / (2 * k->kb * k->kb)) != 0)) {
        throw NodeError{w + "WO must be [2 * deform_groups * " + std::to_string(k->kb * k->kb) + ", " +
                        std::to_string(cin) + ", k, k] with deform_groups dividing " + std::to_string(cm)};
      }
      wt.bo = vector_input(info, w, 12);
      if (!wt.bo.empty() && static_cast<int64_t>(wt.bo.size()) != co) {
        throw NodeError{w + "input 12 (BO) must have " + std::to_string(co) + " values (or none)"};
      }
      wt.ba = vector_input(info, w, 4);
      wt.bb = vector_input(info, w, 6);
      wt.tail_bias = vector_input(info, w, 8);
      wt.bd = vector_input(info, w, 10);
      k->C = cin;
      if (!xs.empty() && xs[3] > 0 && xs[3] != cin) {
        throw NodeError{w + "input X has " + std::to_string(xs[3]) + " channels (NHWC), WA takes " + std::to_string(cin)};
      }
      // the shapes that do not depend on H and W: biases, and the identity's channels
      const int64_t block_out = has_c ? cout : cb;
      if (has_d && cd != block_out) {
        throw NodeError{w + "WD gives " + std::to_string(cd) + " channels, the block " + std::to_string(block_out)};
      }
      if (!has_d && cin != block_out) {
        throw NodeError{w + "without WD the identity is X: the block must give X's " + std::to_string(cin) +
                        " channels, it gives " + std::to_string(block_out)};
      }
      const std::pair<size_t, int64_t> sizes[] = {{4, cm}, {6, cb}, {8, block_out}, {10, block_out}};
      const std::vector<float>* vectors[] = {&wt.ba, &wt.bb, &wt.tail_bias, &wt.bd};
      for (size_t q = 0; q < 4; ++q) {
        const auto [i, want] = sizes[q];
        const int64_t got = static_cast<int64_t>(vectors[q]->size());
        if (got != 0 && got != want) {
          throw NodeError{w + "input " + std::to_string(i) + " (" + kBlockInputNames[i] + ") must have " +
                          std::to_string(want) + " values (or none), got " + std::to_string(got)};
        }
      }
      *kernel = k.release();
      return nullptr;
    });
  }
  const char* GetName() const { return "SparseBlock"; }
  size_t GetInputTypeCount() const { return kBlockInputs; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// One op per element type (ONNX Runtime picks the one whose type constraints the node meets).
SparseSampleConvOp<float> g_conv_f32;
SparseSampleConvOp<Ort::Float16_t> g_conv_f16;
InterpolateOp<float> g_interp_f32;
InterpolateOp<Ort::Float16_t> g_interp_f16;
SparseBlockOp g_block_f32;

}  // namespace

extern "C" {

// Called by SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary: adds the "sai"
// domain with both ops to `options`. The domain objects live as long as the process (one per call).
__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                  const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi* v1 = api_base->GetApi(1);
    if (v1 == nullptr) return nullptr;
    return v1->CreateStatus(ORT_FAIL, (std::string("libsai_ort_ops.so needs onnxruntime with C API version >= ") +
                                       std::to_string(ORT_API_VERSION) + ", this one is " +
                                       api_base->GetVersionString())
                                          .c_str());
  }
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (g_api == nullptr) {
    g_api = api;
    Ort::InitApi(api);
    scipy_openblas_set_num_threads(1);  // the sessions' threads run the GEMM blocks
  }
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = api->CreateCustomOpDomain(kDomain, &domain)) return st;
  for (OrtCustomOp* op : std::initializer_list<OrtCustomOp*>{&g_conv_f32, &g_conv_f16, &g_interp_f32, &g_interp_f16, &g_block_f32}) {
    if (OrtStatus* st = api->CustomOpDomain_Add(domain, op)) return st;
  }
  return api->AddCustomOpDomain(options, domain);
}

}  // extern "C"
