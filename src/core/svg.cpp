#include "core/svg.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace m2::svg {

std::string escape(std::string_view t) {
  std::string s;
  for (char c : t) {
    switch (c) {
      case '&': s += "&amp;"; break;
      case '<': s += "&lt;"; break;
      case '>': s += "&gt;"; break;
      case '"': s += "&quot;"; break;
      default: s += c;
    }
  }
  return s;
}

namespace {

// The document, its background and its title.
std::string open(double w, double h, const std::string& title) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\" "
      "text-anchor=\"middle\">{}</text>\n",
      w, h, w / 2, escape(title));
}

std::string axis_labels(double W, double H, double L, double R, double T, double B, const std::string& xlabel,
                        const std::string& ylabel) {
  return fmt::format(
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n"
      "<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
      (L + W - R) / 2, H - 12, escape(xlabel), (T + H - B) / 2, (T + H - B) / 2, escape(ylabel));
}

const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"};

}  // namespace

std::string line_chart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                       const std::vector<std::pair<double, double>>& pts, bool log_x) {
  const double W = 640, H = 400, L = 70, R = 20, T = 40, B = 50;
  double x0 = 1e300, x1 = -1e300, y1 = 0;
  auto fx = [&](double x) { return log_x ? std::log2(std::max(x, 1e-9)) : x; };
  for (auto [x, y] : pts) {
    x0 = std::min(x0, fx(x));
    x1 = std::max(x1, fx(x));
    y1 = std::max(y1, y);
  }
  if (pts.empty()) x0 = 0, x1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 <= 0) y1 = 1;
  y1 *= 1.1;
  auto px = [&](double x) { return L + (fx(x) - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - y / y1 * (H - T - B); };
  std::string s = open(W, H, title);
  s += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
                   L, H - B, W - R, H - B, L, T, L, H - B);
  for (int i = 0; i <= 5; ++i) {
    const double y = y1 * i / 5;
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.4g}</text><line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n",
                     L - 6, py(y) + 4, y, L, py(y), W - R, py(y));
  }
  for (auto [x, y] : pts) s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:g}</text>\n", px(x), H - B + 16, x);
  s += axis_labels(W, H, L, R, T, B, xlabel, ylabel);
  std::string path;
  for (auto [x, y] : pts) path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "M" : " L", px(x), py(y));
  if (!path.empty()) s += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n", path, kColors[0]);
  for (auto [x, y] : pts) s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\"/>\n", px(x), py(y), kColors[0]);
  return s + "</svg>\n";
}

std::string heatmap(const std::string& title, const std::string& xlabel, const std::string& ylabel, int rows, int cols,
                    const std::vector<double>& v) {
  const double L = 70, R = 90, T = 40, B = 50;
  const double cell = std::clamp(900.0 / std::max(cols, 1), 3.0, 28.0), ch = std::clamp(600.0 / std::max(rows, 1), 3.0, 28.0);
  const double W = L + R + cell * cols, H = T + B + ch * rows;
  double mx = 0;
  for (double x : v)
    if (std::isfinite(x)) mx = std::max(mx, x);
  if (mx <= 0) mx = 1;
  auto color = [&](double x) {
    if (!(x >= 0)) return std::string("#bbbbbb");
    const double t = std::isfinite(x) ? std::clamp(x / mx, 0.0, 1.0) : 1.0;
    return fmt::format("#{:02x}{:02x}{:02x}", int(255 - 75 * t), int(255 - 235 * t), int(255 - 235 * t));
  };
  std::string s = open(W, H, title);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double x = v[size_t(r) * size_t(cols) + size_t(c)];
      s += fmt::format("<rect class=\"cell\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"><title>{} {}, {} {}: {}</title></rect>\n",
                       L + c * cell, T + r * ch, cell, ch, color(x), escape(ylabel), r, escape(xlabel), c,
                       x >= 0 ? fmt::format("{:.5g}", x) : std::string("not measured"));
    }
  const int ystep = std::max(1, rows / 16), xstep = std::max(1, cols / 16);
  for (int r = 0; r < rows; r += ystep)
    s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n", L - 4, T + (r + 0.5) * ch + 4, r);
  for (int c = 0; c < cols; c += xstep)
    s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", L + (c + 0.5) * cell, H - B + 14, c);
  // Colour bar.
  const double bx = W - R + 20, bh = H - T - B;
  for (int i = 0; i < 20; ++i)
    s += fmt::format("<rect x=\"{}\" y=\"{:.1f}\" width=\"14\" height=\"{:.1f}\" fill=\"{}\"/>\n", bx, T + bh * (19 - i) / 20.0,
                     bh / 20.0 + 0.5, color(mx * (i + 0.5) / 20.0));
  s += fmt::format("<text x=\"{}\" y=\"{}\">{:.3g}</text>\n<text x=\"{}\" y=\"{}\">0</text>\n", bx + 18, T + 10, mx, bx + 18, T + bh);
  s += axis_labels(W, H, L, R, T, B, xlabel, ylabel);
  return s + "</svg>\n";
}

std::string histogram(const std::string& title, const std::string& xlabel,
                      const std::vector<std::pair<std::string, std::vector<double>>>& series, int bins) {
  const double W = 640, H = 400, L = 70, R = 130, T = 40, B = 50;
  bins = std::max(bins, 1);
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& [name, v] : series)
    for (double x : v)
      if (std::isfinite(x)) lo = std::min(lo, x), hi = std::max(hi, x);
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (hi <= lo) hi = lo + 1e-9 + std::fabs(lo) * 1e-6;
  std::vector<std::vector<int>> counts(series.size(), std::vector<int>(size_t(bins), 0));
  int top = 1;
  for (size_t k = 0; k < series.size(); ++k)
    for (double x : series[k].second) {
      if (!std::isfinite(x)) continue;
      const int b = std::clamp(int((x - lo) / (hi - lo) * bins), 0, bins - 1);
      top = std::max(top, ++counts[k][size_t(b)]);
    }
  auto px = [&](double x) { return L + (x - lo) / (hi - lo) * (W - L - R); };
  auto py = [&](double c) { return H - B - c / (top * 1.1) * (H - T - B); };
  std::string s = open(W, H, title);
  s += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
                   L, H - B, W - R, H - B, L, T, L, H - B);
  for (int i = 0; i <= 4; ++i) {
    const double x = lo + (hi - lo) * i / 4;
    s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.3g}</text>\n", px(x), H - B + 16, x);
  }
  s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n", L - 6, py(top) + 4, top);
  for (size_t k = 0; k < series.size(); ++k) {
    std::string path = fmt::format("M{:.1f},{:.1f}", px(lo), py(0));
    for (int b = 0; b < bins; ++b) {
      const double x0 = lo + (hi - lo) * b / bins, x1 = lo + (hi - lo) * (b + 1) / bins;
      path += fmt::format(" L{:.1f},{:.1f} L{:.1f},{:.1f}", px(x0), py(counts[k][size_t(b)]), px(x1), py(counts[k][size_t(b)]));
    }
    path += fmt::format(" L{:.1f},{:.1f}", px(hi), py(0));
    const char* col = kColors[k % 6];
    s += fmt::format("<path class=\"series\" d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>\n", path, col);
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n", W - R + 12,
                     T + 18 * k, col, W - R + 28, T + 18 * k + 10, escape(series[k].first));
  }
  s += axis_labels(W, H, L, R, T, B, xlabel, "experts");
  return s + "</svg>\n";
}

}  // namespace m2::svg
