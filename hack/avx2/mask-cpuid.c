// LD_PRELOAD shim: makes this process (and every process it starts with the same environment)
// see a CPU without AVX-512 and without VNNI, at native speed, so that ONNX Runtime's MLAS and
// Rust's feature detection take their AVX2 code paths on a machine that has AVX-512 VNNI.
//
// How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, CPU flag `cpuid_fault`) turns every
// CPUID instruction into SIGSEGV; the handler runs the real CPUID with faulting briefly off,
// clears the feature bits below, and steps over the instruction. Libraries read CPUID once, at
// start, so the cost is nil after that. Loaded by hack/avx2/as-avx2, which refuses to run when
// the kernel or CPU lacks CPUID faulting (never a silent native run).
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <cpuid.h>

static int arch_prctl_(int code, unsigned long arg) { return (int)syscall(SYS_arch_prctl, code, arg); }

static void mask(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    (void)a;
    if (leaf == 7 && sub == 0) {
        // EBX: avx512f 16, dq 17, ifma 21, cd 28, bw 30, vl 31
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 28) | (1u << 30) | (1u << 31));
        // ECX: avx512_vbmi 1, vbmi2 6, avx512_vnni 11, bitalg 12, vpopcntdq 14
        *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        // EDX: 4vnniw 2, 4fmaps 3, vp2intersect 8, amx_bf16 22, avx512_fp16 23, amx_tile 24, amx_int8 25
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        // EAX: avx_vnni 4, avx512_bf16 5, avx_ifma 23; EDX: avx_vnni_int8 4, avx_ne_convert 5, avx_vnni_int16 10
        *a &= ~((1u << 4) | (1u << 5) | (1u << 23));
        *d &= ~((1u << 4) | (1u << 5) | (1u << 10));
    } else if (leaf == 0xd && sub == 0) {
        // XSAVE state components 5-7 (opmask, ZMM) as not supported
        *a &= ~(7u << 5);
    }
}

static void on_segv(int sig, siginfo_t *info, void *uctx) {
    ucontext_t *uc = (ucontext_t *)uctx;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        // Not a CPUID: restore the default action and let the fault happen again.
        signal(sig, SIG_DFL);
        (void)info;
        return;
    }
    uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX];
    uint32_t a, b, c, d;
    arch_prctl_(ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, sub, a, b, c, d);
    arch_prctl_(ARCH_SET_CPUID, 0);
    mask(leaf, sub, &a, &b, &c, &d);
    g[REG_RAX] = a; g[REG_RBX] = b; g[REG_RCX] = c; g[REG_RDX] = d;
    g[REG_RIP] += 2;
}

__attribute__((constructor)) static void init(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0 || arch_prctl_(ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "mask-cpuid: CPUID faulting is not available here (needs the cpuid_fault CPU flag)\n");
        _exit(70);
    }
}
