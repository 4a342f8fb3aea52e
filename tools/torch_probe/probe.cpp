// Probe for tools/gen_torch_isf.py: nothing here runs.  It is compiled with -g
// -femit-class-debug-always against an installed torch's headers, and the
// generator reads the layouts of the structures below from the DWARF of the
// linked shared object.  Every type the layout table describes must be named
// here, so that the compiler emits its complete definition.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <c10/core/StorageImpl.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/typeid.h>
#include <torch/csrc/Device.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/variable.h>

namespace zen_probe {

// Structures the reader walks: Python object -> at::Tensor -> TensorImpl ->
// StorageImpl, plus the autograd metadata that says requires_grad.
THPVariable* python_variable;
at::Tensor* tensor;
c10::TensorImpl* tensor_impl;
c10::StorageImpl* storage_impl;
torch::autograd::AutogradMeta* autograd_meta;
c10::Device* device;

// Python objects that appear as module hyper-parameters (dtype=torch.float16, device=...).
THPDtype* python_dtype;
THPDevice* python_device;

// Enumerations exported whole.
c10::ScalarType scalar_type;
c10::DeviceType device_type;

// caffe2::scalarTypeItemSizes is a header-only constexpr array with internal
// linkage: taking its address makes g++ place it in .rodata and describe it in
// the DWARF, where the generator reads the item size of every ScalarType.
const void* scalar_type_item_sizes = &caffe2::scalarTypeItemSizes;

}  // namespace zen_probe
