// The Python module mcm_fast._C: importing it runs the static TORCH_LIBRARY registrations of
// every op in csrc/ (torch.ops.mcm_fast.*). It exposes no Python functions of its own.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
