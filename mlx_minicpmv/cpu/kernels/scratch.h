// Scratch that lives with a thread and grows, aligned to the cache line. A std::vector's data
// is only 16-byte aligned (a large one is an mmap plus malloc's 16-byte header), so every 64-byte
// AMX tile row or AVX-512 load from it straddled two lines: the bf16 GEMM ran at 5.0 or 7.1 ms
// for the same 512 x 1024 x 3584 product depending on where malloc had put its buffers.

#pragma once

#include <cstdlib>
#include <memory>
#include <new>

namespace cpuk {

template <class T>
class Scratch {
 public:
  // At least n elements, their contents unspecified (kept when they fit).
  T* get(size_t n) {
    if (n > size_) {
      const size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign;
      T* p = static_cast<T*>(std::aligned_alloc(kAlign, bytes));
      if (p == nullptr) throw std::bad_alloc();
      data_.reset(p);
      size_ = n;
    }
    return data_.get();
  }

 private:
  static constexpr size_t kAlign = 64;
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  size_t size_ = 0;
};

}  // namespace cpuk
