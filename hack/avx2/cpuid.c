/* Prints the CPUID bits that decide ONNX Runtime's MLAS int8 GEMM kernel choice.
   Run natively or under qemu-user: qemu answers CPUID for the emulated model. */
#include <stdio.h>
#include <cpuid.h>
int main(void) {
    unsigned a, b, c, d;
    __cpuid_count(1, 0, a, b, c, d);
    int avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1;
    int avx512vnni = (c >> 11) & 1;
    int amx_int8 = (d >> 25) & 1;
    __cpuid_count(7, 1, a, b, c, d);
    int avxvnni = (a >> 4) & 1;
    int avxvnniint8 = (d >> 4) & 1;
    printf("avx=%d fma=%d avx2=%d avx512f=%d avx512bw=%d avx512_vnni=%d avx_vnni=%d avx_vnni_int8=%d amx_int8=%d\n",
           avx, fma, avx2, avx512f, avx512bw, avx512vnni, avxvnni, avxvnniint8, amx_int8);
    return 0;
}
