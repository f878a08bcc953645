// Writes the cases tests/interop/check_qwix.py runs through Qwix itself: seeded arrays (Gaussian,
// heavy-tailed, tie-heavy, wide-range), each quantized by qforge over qtypes, tilings and
// calibration methods. cases.safetensors holds per case i: "i.x" (input), "i.scale", "i.zero_point"
// (when asymmetric) and "i.dq" (qforge's dequantized values); __metadata__ "i" holds the case as
// JSON (qtype, channelwise_axes, tiled_axes, calibration_method, distribution, seed).
// Usage: qforge_qwix_case_writer OUT_DIR [SEED]   (the seed is printed; pass it to replay a run)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qforge/core/qarray.hpp"
#include "qforge/formats/safetensors.hpp"

namespace qf = qforge::formats;
using qforge::HowToQuantize;
using qforge::TensorF;

namespace {

constexpr std::int64_t kRows = 16, kCols = 64;

TensorF make_array(const std::string& distribution, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  TensorF t({kRows, kCols});
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::student_t_distribution<float> heavy(2.0f);
  std::uniform_int_distribution<int> half_steps(-255, 255);
  std::uniform_real_distribution<float> exponent(-6.0f, 3.0f);
  for (auto& v : t.vec()) {
    if (distribution == "gaussian") v = normal(rng);
    else if (distribution == "heavy_tailed") v = heavy(rng);
    // Odd multiples of half of absmax/127.5 put many values on exact .5 ties of the int8 grid.
    else if (distribution == "ties") v = static_cast<float>(half_steps(rng)) * (2.0f / 255.0f);
    else v = std::pow(10.0f, exponent(rng)) * (normal(rng) < 0 ? -1.0f : 1.0f);  // wide_range
  }
  return t;
}

struct Tiling {
  std::vector<int> channelwise;
  std::map<int, qforge::TileSize> tiled;
  nlohmann::json tiled_json;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR [SEED]\n", argv[0]);
    return 2;
  }
  const std::uint64_t base_seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : std::random_device{}();
  std::printf("qwix cases: seed %llu (pass it as the second argument to replay)\n",
              static_cast<unsigned long long>(base_seed));
  std::filesystem::create_directories(argv[1]);

  const std::vector<Tiling> tilings = {{{0}, {}, nlohmann::json::object()},
                                       {{0}, {{1, std::int64_t{32}}}, {{"1", 32}}}};
  const std::vector<std::pair<std::string, std::vector<std::string>>> qtypes_and_methods = {
      {"int8", {"absmax", "absmax,0.9", "minmax", "rms,3", "fixed,-2,2"}},
      {"int4", {"absmax", "absmax,0.9", "minmax", "fixed,-2,2"}},
      {"fp8_e4m3", {"absmax", "absmax,0.9"}},
      {"nf4", {"absmax"}},
  };
  const std::vector<std::string> distributions = {"gaussian", "heavy_tailed", "ties", "wide_range"};

  qf::SafetensorsWriter w;
  int cases = 0;
  std::uint64_t seed = base_seed;
  for (const auto& [qtype_name, methods] : qtypes_and_methods)
    for (const auto& method : methods)
      for (const Tiling& tiling : tilings)
        for (const auto& distribution : distributions) {
          const TensorF x = make_array(distribution, ++seed);
          const HowToQuantize how{qforge::parse_qtype(qtype_name), tiling.channelwise, tiling.tiled, method};
          const qforge::QArray q = qforge::quantize(x, how);
          const std::string id = std::to_string(cases++);
          w.add_f32(id + ".x", x);
          w.add_f32(id + ".scale", q.scale());
          if (q.zero_point()) {
            TensorF zp(q.zero_point()->shape());
            for (std::int64_t i = 0; i < zp.size(); ++i) zp[i] = static_cast<float>((*q.zero_point())[i]);
            w.add_f32(id + ".zero_point", zp);
          }
          w.add_f32(id + ".dq", qforge::dequantize(q));
          w.set_metadata(id, nlohmann::json{{"qtype", qtype_name},
                                            {"channelwise_axes", tiling.channelwise},
                                            {"tiled_axes", tiling.tiled_json},
                                            {"calibration_method", method},
                                            {"distribution", distribution},
                                            {"seed", seed}}
                                 .dump());
        }
  w.set_metadata("cases", std::to_string(cases));
  w.write((std::filesystem::path(argv[1]) / "cases.safetensors").string());
  std::printf("qwix cases: %d written\n", cases);
  return 0;
}
