#include "pool.h"

#include <sched.h>

#include <cstdlib>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace cpuk {

namespace {
int default_threads() {
  if (const char* env = std::getenv("MLX_MINICPMV_THREADS")) {
    if (int n = std::atoi(env); n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}
constexpr int kSpin = 2000;  // pauses before a worker sleeps: ~50-100 us
}  // namespace

Pool& Pool::get() {
  static Pool* pool = new Pool();  // never destroyed: its threads may outlive static destructors
  return *pool;
}

Pool::Pool() : threads_(default_threads()) {}

void Pool::pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

Pool::Workers& Pool::workers() {
  std::lock_guard<std::mutex> lock(start_);
  if (workers_ == nullptr || owner_ != getpid()) {
    workers_ = new Workers();  // in a forked child the old one is left: its threads do not exist there
    owner_ = getpid();
    for (int i = 1; i < threads_; ++i) {
      workers_->threads.emplace_back(&Pool::work, this, workers_, i);
      workers_->threads.back().detach();
    }
  }
  return *workers_;
}

void Pool::work(Workers* w, int index) {
  unsigned long seen = 0;
  for (;;) {
    for (int s = 0; s < kSpin && w->generation.load(std::memory_order_acquire) == seen; ++s) pause();
    if (w->generation.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(w->mutex);
      w->wake.wait(lock, [&] { return w->generation.load(std::memory_order_acquire) != seen; });
    }
    seen = w->generation.load(std::memory_order_acquire);
    if (index < w->active.load(std::memory_order_relaxed)) {
      w->job(index);
      w->pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
}

}  // namespace cpuk
