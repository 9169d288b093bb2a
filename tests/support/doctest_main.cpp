// Shared doctest main for lori's tests.
//
// Two project rules are enforced here rather than by convention:
//  * A test case that executes no assertion fails the run ("a test that cannot fail is a defect").
//    A listener counts assertions per test case; any case that ends with zero is reported and the
//    process exits non-zero.
//  * GPU test executables (built with LORI_TEST_REQUIRES_GPU) exit with code 77 when no CUDA device
//    is present; ctest's SKIP_RETURN_CODE turns that into "skipped", never "passed".
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#if defined(LORI_TEST_REQUIRES_GPU)
#include <cuda_runtime_api.h>
#endif

namespace {

std::mutex g_mutex;
std::vector<std::string> g_empty_cases;

struct no_assertion_listener : doctest::IReporter {
  explicit no_assertion_listener(const doctest::ContextOptions&) {}
  const doctest::TestCaseData* current = nullptr;
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData& tc) override { current = &tc; }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats& st) override {
    if (st.numAssertsCurrentTest == 0 && current != nullptr && !current->m_skip) {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_empty_cases.emplace_back(current->m_name);
    }
  }
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

}  // namespace

DOCTEST_REGISTER_LISTENER("lori_no_assertion", 1, no_assertion_listener);

int main(int argc, char** argv) {
#if defined(LORI_TEST_REQUIRES_GPU)
  int devices = 0;
  const cudaError_t st = cudaGetDeviceCount(&devices);
  if (st != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device available (%s)\n", st == cudaSuccess ? "0 devices" : cudaGetErrorString(st));
    return 77;
  }
#endif
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  const int rc = context.run();
  if (context.shouldExit()) return rc;
  if (!g_empty_cases.empty()) {
    for (const auto& name : g_empty_cases)
      std::fprintf(stderr, "error: test case \"%s\" executed no assertion (a test that cannot fail)\n", name.c_str());
    return rc != 0 ? rc : 1;
  }
  return rc;
}
