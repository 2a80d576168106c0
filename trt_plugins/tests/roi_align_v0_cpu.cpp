/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * roi_align_v0_cpu.cpp: the CPU reference of sai::RoiAlignV0 (roiAlignV0Math.h) alone, with no TensorRT or
 * CUDA header, so that its math is tested where no TensorRT headers are (tests/test_detector_trt_plugin.py).
 * Usage: roi_align_v0_cpu IN.bin OUT.bin, the files of roi_align_v0_harness.cpp.
 */
#include "roiAlignV0Math.h"

#include <cstdio>
#include <vector>

namespace
{
bool readAll(FILE* fp, void* dst, size_t bytes)
{
    return bytes == 0 || std::fread(dst, 1, bytes, fp) == bytes;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::fprintf(stderr, "usage: roi_align_v0_cpu IN.bin OUT.bin\n");
        return 2;
    }
    FILE* fp = std::fopen(argv[1], "rb");
    if (fp == nullptr)
    {
        return 1;
    }
    int32_t h[7];
    sai::SaiRoiAlignParams p;
    bool ok = readAll(fp, h, sizeof(h)) && readAll(fp, &p.spatialScale, sizeof(float));
    p.N = h[0];
    p.C = h[1];
    p.H = h[2];
    p.W = h[3];
    p.R = h[4];
    p.outSize = h[5];
    p.samplingRatio = h[6];
    ok = ok && sai::saiRoiAlignParamsValid(p);
    std::vector<float> x(ok ? static_cast<size_t>(p.N) * p.C * p.H * p.W : 0);
    std::vector<float> rois(ok ? static_cast<size_t>(p.R) * 4 : 0);
    std::vector<int64_t> b(ok ? static_cast<size_t>(p.R) : 0);
    std::vector<float> y(ok ? static_cast<size_t>(p.R) * p.C * p.outSize * p.outSize : 0);
    ok = ok && readAll(fp, x.data(), x.size() * 4) && readAll(fp, rois.data(), rois.size() * 4)
        && readAll(fp, b.data(), b.size() * 8);
    std::fclose(fp);
    if (!ok)
    {
        std::fprintf(stderr, "roi_align_v0_cpu: bad input file %s\n", argv[1]);
        return 1;
    }
    sai::saiRoiAlignV0Reference(p, x.data(), rois.data(), b.data(), y.data());
    FILE* op = std::fopen(argv[2], "wb");
    if (op == nullptr || std::fwrite(y.data(), 4, y.size(), op) != y.size())
    {
        return 1;
    }
    std::fclose(op);
    std::printf("ok\n");
    return 0;
}
