// Small SVG charts (no dependencies): line charts for benchmarks, heatmaps and histograms for
// quality reports. Text is escaped; every chart is a complete <svg> document.
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace m2::svg {

std::string escape(std::string_view text);

// y against x (log2 x axis when log_x), points joined in the order given.
std::string line_chart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                       const std::vector<std::pair<double, double>>& points, bool log_x);

// rows × cols cells (values row-major), white → dark red over [0, max]; negative values are
// "not measured" (grey). Each cell is a <rect class="cell"> with a <title> tooltip "row r, col c: v".
std::string heatmap(const std::string& title, const std::string& xlabel, const std::string& ylabel, int rows, int cols,
                    const std::vector<double>& values);

// Histograms of several series over one shared range and `bins` bins, drawn as outlines.
std::string histogram(const std::string& title, const std::string& xlabel,
                      const std::vector<std::pair<std::string, std::vector<double>>>& series, int bins);

}  // namespace m2::svg
