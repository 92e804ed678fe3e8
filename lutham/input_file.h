// Parser of lutham_runner's input file (format in runner.cpp). Header-only so the runner
// stays one translation unit (sharekan.lutham.build_runner compiles runner.cpp alone) and
// the parser can be fuzzed without ExecuTorch (fuzz_input_file.cpp).
//
// Everything the file declares is checked before memory is committed to it: at most
// kMaxDims dims, each in [0, INT32_MAX] (ExecuTorch's int32 sizes), the product of the
// dims (0 counted as 1) at most INT32_MAX (ExecuTorch's int32 strides), the element count
// computed with overflow checks and no larger than the rest of the file can hold (each
// value takes a separator and at least one character: 2 bytes). Values are appended one
// by one as they are read, so memory grows with the file's actual content, and the file
// itself is capped at kMaxFileBytes.

#ifndef SHAREKAN_LUTHAM_INPUT_FILE_H_
#define SHAREKAN_LUTHAM_INPUT_FILE_H_

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <sys/stat.h>

namespace lutham_input {

/// Most dims of one tensor.
constexpr long long kMaxDims = 8;
/// Largest accepted input file (256 MiB of text, at most 128 Mi values).
constexpr uint64_t kMaxFileBytes = uint64_t{256} << 20;
/// Largest dim and largest product of dims (0 counted as 1): ExecuTorch's int32 sizes/strides.
constexpr long long kMaxExtent = 2147483647LL;

struct Tensor {
  std::vector<int32_t> sizes;
  std::vector<float> values;  // row-major, product(sizes) values
};

/// Quoted, at most 32 characters, non-printable bytes as '?': safe to print in messages.
inline std::string quote(const std::string& tok) {
  std::string q = "'";
  for (size_t i = 0; i < tok.size() && i < 32; ++i) {
    const unsigned char c = static_cast<unsigned char>(tok[i]);
    q += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '?';
  }
  if (tok.size() > 32) q += "...";
  return q + "'";
}

/// Whole-token decimal integer (no trailing bytes, no overflow).
inline bool parse_int(const std::string& s, long long* v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  *v = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end == s.c_str() + s.size();
}

/// Whole-token float32 (nan / inf accepted; out-of-range magnitudes become +-inf or 0).
inline bool parse_float(const std::string& s, float* v) {
  if (s.empty()) return false;
  char* end = nullptr;
  *v = std::strtof(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

inline bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/// Whitespace-separated tokens of a buffer; a token starting with '#' comments out the rest
/// of its line.
class Tokens {
 public:
  Tokens(const char* data, size_t len) : data_(data), len_(len) {}

  bool next(std::string* tok) {
    for (;;) {
      while (pos_ < len_ && is_space(data_[pos_])) ++pos_;
      if (pos_ == len_) return false;
      if (data_[pos_] == '#') {
        while (pos_ < len_ && data_[pos_] != '\n') ++pos_;
        continue;
      }
      const size_t start = pos_;
      while (pos_ < len_ && !is_space(data_[pos_])) ++pos_;
      tok->assign(data_ + start, pos_ - start);
      return true;
    }
  }

  /// Bytes not yet read.
  size_t remaining() const { return len_ - pos_; }

 private:
  const char* data_;
  size_t len_;
  size_t pos_ = 0;
};

/// Parses the tensors of an input file held in data[0..len). On failure returns false with
/// a message in *err (out holds the tensors read before the error).
inline bool parse(const char* data, size_t len, std::vector<Tensor>* out, std::string* err) {
  Tokens in(data, len);
  std::string tok;
  while (in.next(&tok)) {
    const std::string where = "tensor " + std::to_string(out->size());
    if (tok != "tensor") {
      *err = "expected 'tensor', got " + quote(tok);
      return false;
    }
    if (!in.next(&tok)) {
      *err = where + ": file ends before the dtype";
      return false;
    }
    if (tok != "f32") {
      *err = where + ": only f32 tensors are supported, got " + quote(tok);
      return false;
    }
    long long ndim = 0;
    if (!in.next(&tok) || !parse_int(tok, &ndim) || ndim < 0 || ndim > kMaxDims) {
      *err = where + ": NDIM must be an integer in [0, " + std::to_string(kMaxDims) +
             "], got " + quote(tok);
      return false;
    }
    Tensor t;
    uint64_t numel = 1, extent = 1;
    for (long long d = 0; d < ndim; ++d) {
      long long v = 0;
      if (!in.next(&tok) || !parse_int(tok, &v) || v < 0 || v > kMaxExtent) {
        *err = where + ": dimension " + std::to_string(d) + " must be an integer in [0, " +
               std::to_string(kMaxExtent) + "], got " + quote(tok);
        return false;
      }
      const uint64_t u = static_cast<uint64_t>(v);
      if (__builtin_mul_overflow(numel, u, &numel) ||
          __builtin_mul_overflow(extent, u ? u : 1, &extent) ||
          extent > static_cast<uint64_t>(kMaxExtent)) {
        *err = where + ": the product of the dimensions exceeds " + std::to_string(kMaxExtent);
        return false;
      }
      t.sizes.push_back(static_cast<int32_t>(v));
    }
    // each value needs a separator before it and a character
    const uint64_t fits = static_cast<uint64_t>(in.remaining()) / 2;
    if (numel > fits) {
      *err = where + ": declares " + std::to_string(numel) + " values but the " +
             std::to_string(in.remaining()) + " bytes left in the file hold at most " +
             std::to_string(fits);
      return false;
    }
    for (uint64_t e = 0; e < numel; ++e) {
      if (!in.next(&tok)) {
        *err = where + ": file ends after " + std::to_string(e) + " of " +
               std::to_string(numel) + " values";
        return false;
      }
      float v = 0.0f;
      if (!parse_float(tok, &v)) {
        *err = where + ": value " + std::to_string(e) + " is not a float: " + quote(tok);
        return false;
      }
      t.values.push_back(v);
    }
    out->push_back(std::move(t));
  }
  return true;
}

/// Reads a whole file (at most kMaxFileBytes) into *contents.
inline bool read_file(const char* path, std::string* contents, std::string* err) {
  struct stat st {};
  if (stat(path, &st) != 0) {
    *err = "cannot open input file";
    return false;
  }
  if (S_ISDIR(st.st_mode)) {
    *err = "is a directory, not an input file";
    return false;
  }
  // A regular file's size is known up front: reject before reading, read without regrowth.
  // Others (pipes) are capped while reading.
  const bool regular = S_ISREG(st.st_mode);
  if (regular && static_cast<uint64_t>(st.st_size) > kMaxFileBytes) {
    *err = "input file larger than " + std::to_string(kMaxFileBytes >> 20) + " MiB";
    return false;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *err = "cannot open input file";
    return false;
  }
  contents->clear();
  if (regular) contents->reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof buf);
    const std::streamsize n = in.gcount();
    if (n > 0) {
      if (contents->size() + static_cast<uint64_t>(n) > kMaxFileBytes) {
        *err = "input file larger than " + std::to_string(kMaxFileBytes >> 20) + " MiB";
        return false;
      }
      contents->append(buf, static_cast<size_t>(n));
    }
  }
  if (in.bad()) {
    *err = "cannot read input file";
    return false;
  }
  return true;
}

/// read_file + parse.
inline bool read_inputs(const char* path, std::vector<Tensor>* out, std::string* err) {
  std::string contents;
  return read_file(path, &contents, err) &&
         parse(contents.data(), contents.size(), out, err);
}

}  // namespace lutham_input

#endif  // SHAREKAN_LUTHAM_INPUT_FILE_H_
