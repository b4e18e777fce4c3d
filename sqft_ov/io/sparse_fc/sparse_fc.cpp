// SparseFullyConnected: y = x W^T with W stored as a bitmask and its packed non-zeros (bitmask_gemv.hpp),
// an OpenVINO extension op. The CPU plugin runs it as a reference node (evaluate() over plain tensors); rows of
// W are split over OpenVINO's own threads (ov::parallel_for), and each row is applied to every token while it is
// in the L1 cache, so the weights stream from memory once per inference whatever the number of tokens. The
// AVX-512 kernels run where the CPU has them; elsewhere, or with SQFT_OV_SPARSE_FC_KERNEL=plain in the
// environment when the library loads, a plain C++ path computes the same sums (slower).
// Inputs: 0 x [..., K] f32; 1 mask u8 [N, K/8]; 2 values u8 [bytes]; 3 offsets i32 [N]; 4 scales f16 or f32 [N]
// (INT8) or [N, K/64] (INT4): an IR stores f16, the CPU plugin hands f32 over. Attribute value_bits: 8 or 4. Output [..., N] f32.
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/op/op.hpp>

#include <cstdlib>
#include <cstring>

#include "bitmask_gemv.hpp"

namespace {

bool use_vector_kernels() {
  const char* forced = std::getenv("SQFT_OV_SPARSE_FC_KERNEL");
  return sqft_sparse::has_avx512_kernels() && !(forced && std::strcmp(forced, "plain") == 0);
}

const bool vector_kernels = use_vector_kernels();

class SparseFullyConnected : public ov::op::Op {
 public:
  OPENVINO_OP("SparseFullyConnected", "sqft_ov");

  SparseFullyConnected() = default;
  SparseFullyConnected(const ov::OutputVector& args, int64_t value_bits) : Op(args), m_value_bits(value_bits) {
    constructor_validate_and_infer_types();
  }

  void validate_and_infer_types() override {
    NODE_VALIDATION_CHECK(this, get_input_size() == 5, "expects 5 inputs (x, mask, values, offsets, scales)");
    NODE_VALIDATION_CHECK(this, m_value_bits == 8 || m_value_bits == 4, "value_bits must be 8 or 4");
    NODE_VALIDATION_CHECK(this, get_input_element_type(0) == ov::element::f32, "x must be f32");
    NODE_VALIDATION_CHECK(this, get_input_element_type(1) == ov::element::u8, "mask must be u8");
    NODE_VALIDATION_CHECK(this, get_input_element_type(2) == ov::element::u8, "values must be u8");
    NODE_VALIDATION_CHECK(this, get_input_element_type(3) == ov::element::i32, "offsets must be i32");
    NODE_VALIDATION_CHECK(this, get_input_element_type(4) == ov::element::f16 || get_input_element_type(4) == ov::element::f32,
                          "scales must be f16 or f32");
    const auto& mask = get_input_partial_shape(1);
    NODE_VALIDATION_CHECK(this, mask.is_static() && mask.size() == 2, "mask must be a static [N, K/8]");
    const int64_t n = mask[0].get_length(), k = 8 * mask[1].get_length();
    NODE_VALIDATION_CHECK(this, k % 64 == 0, "K must be a multiple of 64");
    auto shape = get_input_partial_shape(0);
    NODE_VALIDATION_CHECK(this, shape.rank().is_static() && shape.size() >= 1, "x must have a static rank");
    NODE_VALIDATION_CHECK(this, shape[shape.size() - 1].compatible(k), "x's last dimension must be K = ", k);
    shape[shape.size() - 1] = n;
    set_output_type(0, ov::element::f32, shape);
  }

  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
    return std::make_shared<SparseFullyConnected>(args, m_value_bits);
  }

  bool visit_attributes(ov::AttributeVisitor& visitor) override {
    visitor.on_attribute("value_bits", m_value_bits);
    return true;
  }

  bool has_evaluate() const override { return true; }

  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
    const ov::Shape x_shape = inputs[0].get_shape();
    const ov::Shape mask_shape = inputs[1].get_shape();
    const int N = static_cast<int>(mask_shape[0]), K = static_cast<int>(8 * mask_shape[1]);
    ov::Shape y_shape = x_shape;
    y_shape.back() = N;
    outputs[0].set_shape(y_shape);
    const size_t tokens = ov::shape_size(x_shape) / K;
    std::vector<float> converted;  // f16 scales (outside the CPU plugin), once per call
    const float* scales = inputs[4].get_element_type() == ov::element::f32 ? inputs[4].data<const float>() : nullptr;
    if (!scales) {
      const auto* half = static_cast<const uint16_t*>(inputs[4].data());
      converted.resize(inputs[4].get_size());
      for (size_t i = 0; i < converted.size(); ++i) converted[i] = sqft_sparse::half_to_float(half[i]);
      scales = converted.data();
    }
    const sqft_sparse::BitmaskWeight w{inputs[1].data<const uint8_t>(), inputs[2].data<const uint8_t>(),
                                       inputs[3].data<const int32_t>(), scales, N, K, static_cast<int>(m_value_bits)};
    const float* x = inputs[0].data<const float>();
    float* y = outputs[0].data<float>();
    thread_local std::vector<sqft_sparse::QuantizedInput> kept;  // kept between calls: no allocation per token
    if (kept.size() < tokens) kept.resize(tokens);
    std::vector<sqft_sparse::QuantizedInput>& quantized = kept;  // this thread's, named for the workers below
    for (size_t t = 0; t < tokens; ++t) quantized[t].set(x + t * K, K);
    constexpr int rows_per_task = 64;
    ov::parallel_for((N + rows_per_task - 1) / rows_per_task, [&](size_t block) {
      const int end = std::min(N, static_cast<int>(block + 1) * rows_per_task);
      for (int n = static_cast<int>(block) * rows_per_task; n < end; ++n)
        for (size_t t = 0; t < tokens; ++t)
          y[t * N + n] = vector_kernels ? sqft_sparse::row_avx512(w, n, quantized[t])
                                        : sqft_sparse::row_plain(w, n, quantized[t]);
    });
    return true;
  }

 private:
  int64_t m_value_bits = 8;
};

}  // namespace

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({std::make_shared<ov::OpExtension<SparseFullyConnected>>()}));
