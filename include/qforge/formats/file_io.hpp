// Files for the format readers and writers: a read-only memory map, and an atomic output file
// (written under a temporary name in the destination directory, synced, then renamed over the
// destination), so that a failed or interrupted write never leaves a partial file behind.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "qforge/core/error.hpp"

namespace qforge::formats {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_error(Status::kIoError, "{}: cannot open: {}", path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw_error(Status::kIoError, "{}: not a regular file", path);
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        throw_error(Status::kIoError, "{}: cannot map: {}", path, std::strerror(errno));
      }
      data_ = static_cast<const std::uint8_t*>(p);
    }
    ::close(fd);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
  }
  std::span<const std::uint8_t> bytes() const { return {data_, size_}; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// Collects output and commits it with commit(); destroyed without commit(), it removes the
// temporary file and leaves the destination untouched.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    std::string tmpl = path_ + ".tmp.XXXXXX";
    fd_ = ::mkstemp(tmpl.data());
    if (fd_ < 0) throw_error(Status::kIoError, "{}: cannot create a temporary file: {}", path_, std::strerror(errno));
    tmp_ = tmpl;
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  void write(std::span<const std::uint8_t> bytes) {
    const std::uint8_t* p = bytes.data();
    std::size_t left = bytes.size();
    while (left > 0) {
      const ssize_t n = ::write(fd_, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw_error(Status::kIoError, "{}: write failed: {}", path_, std::strerror(errno));
      p += n;
      left -= static_cast<std::size_t>(n);
    }
    written_ += bytes.size();
  }
  void write(const void* data, std::size_t n) { write({static_cast<const std::uint8_t*>(data), n}); }
  void write_zeros(std::size_t n) {
    static const std::uint8_t zeros[64] = {};
    while (n > 0) {
      const std::size_t k = n < sizeof(zeros) ? n : sizeof(zeros);
      write(zeros, k);
      n -= k;
    }
  }
  std::uint64_t written() const { return written_; }

  void commit() {
    if (::fsync(fd_) != 0) throw_error(Status::kIoError, "{}: fsync failed: {}", path_, std::strerror(errno));
    ::fchmod(fd_, 0644);
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      throw_error(Status::kIoError, "{}: cannot rename the finished file into place: {}", path_, std::strerror(errno));
    committed_ = true;
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
  std::uint64_t written_ = 0;
};

}  // namespace qforge::formats
