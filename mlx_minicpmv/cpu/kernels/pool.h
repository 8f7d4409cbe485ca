// A small pool of worker threads for the GEMV: MLX runs an extension's CPU work on a stream
// thread, and a decode step's GEMVs (~190 a token, 0.1-20 ms each) need every core to read the
// weights at memory speed. Each Python thread has its own default stream, so kernels of threads
// generating at once call in concurrently: one holds the workers, the others run on their own
// stream threads alone (the cores are busy anyway) rather than wait or overwrite its job.
// Workers spin briefly between calls, since the next GEMV usually follows within microseconds,
// then sleep; the GEMM's sgemm uses OpenBLAS's own threads.

#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace cpuk {

class Pool {
 public:
  static Pool& get();
  int threads() const { return threads_; }

  // f(begin, end) over [0, n) in contiguous chunks of at least `grain` items, which the calling
  // thread and up to threads() - 1 workers take in turn until none is left; returns when all
  // are done. Chunks, not one part a thread: a worker starts late (it wakes from its spin or
  // sleep) and the cores do not stream at one speed, and with halves the caller spun waiting on
  // the worker for 15% of its own time in a decoded 4-bit token (perf, Zen 4).
  template <class F>
  void parallel_for(long n, long grain, F&& f) {
    const int t = static_cast<int>(std::min<long>(threads_, std::max<long>(1, n / std::max<long>(grain, 1))));
    if (t <= 1) {
      f(0L, n);
      return;
    }
    Workers& w = workers();
    std::unique_lock<std::mutex> turn(w.busy, std::try_to_lock);
    if (!turn.owns_lock()) {
      f(0L, n);
      return;
    }
    const long chunk = std::max<long>(grain, (n + t * kChunks - 1) / (t * kChunks));
    std::atomic<long> next{0};
    auto take = [&f, &next, n, chunk](int) {
      for (long b; (b = next.fetch_add(chunk, std::memory_order_relaxed)) < n;) f(b, std::min(n, b + chunk));
    };
    {
      std::lock_guard<std::mutex> lock(w.mutex);
      w.job = take;
      w.active.store(t, std::memory_order_relaxed);
      w.pending.store(t - 1, std::memory_order_relaxed);
      w.generation.fetch_add(1, std::memory_order_release);
    }
    w.wake.notify_all();
    take(0);
    while (w.pending.load(std::memory_order_acquire) != 0) pause();
  }

 private:
  static constexpr int kChunks = 4;  // chunks a thread, where the grain allows

  struct Workers {
    std::mutex busy;  // held by the one caller whose job the workers run
    std::mutex mutex;
    std::condition_variable wake;
    std::function<void(int)> job;
    std::atomic<int> active{0};
    std::atomic<int> pending{0};
    std::atomic<unsigned long> generation{0};
    std::vector<std::thread> threads;
  };

  Pool();
  Workers& workers();
  void work(Workers* w, int index);
  static void pause();

  int threads_;
  Workers* workers_ = nullptr;  // made on first use; a forked child makes its own (the parent's threads are gone)
  pid_t owner_ = 0;
  std::mutex start_;
};

}  // namespace cpuk
