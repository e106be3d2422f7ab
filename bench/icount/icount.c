/*
 * icount: a qemu-user TCG plugin that counts the guest instructions a run
 * executes, exactly, by class and by the symbol each translation block
 * starts in. Built by bench/arm_icount.sh (gcc -shared -fPIC); loaded with
 *
 *   qemu-aarch64 -plugin PATH/libicount.so,out=FILE PROGRAM ...
 *
 * FILE gets one line per class ("class NAME COUNT", "total" first) and one
 * per symbol ("sym COUNT NAME"; "?" where qemu knows no symbol, e.g. in
 * shared libraries). Each block's run count is kept by a callback with an
 * atomic add, so the counts stay exact when guest threads run at once (the
 * model's hash runs in a thread of its own while it is decoded; qemu 7.2's
 * inline counters lost updates there).
 *
 * The plugin API is declared here, not included: only the calls below are
 * used, with the signatures of qemu's plugin API version 1 (qemu 7.x).
 *
 * Classes, from the instruction's encoding:
 *   aarch64: sdot (SDOT/UDOT/USDOT/SUDOT, vector and by element), smmla
 *            (SMMLA/UMMLA/USMMLA), smlal (SMLAL/UMLAL/SMLSL/UMLSL/SMULL/
 *            UMULL, vector and by element; SADALP/UADALP), fmla (FMLA/FMLS
 *            vector and by element, scalar FMADD/FMSUB/FNMADD/FNMSUB),
 *            neon (every other SIMD&FP data-processing instruction), sve
 *            (every SVE/SME encoding), mem (loads and stores, SIMD ones
 *            included), scalar (the rest).
 *   arm:     Thumb-2 assumed (the thumbv7neon target): smlal (VMLAL/VMLSL/
 *            VMULL integer, VPADAL), fmla (VMLA/VMLS/VFMA/VFMS .F32, vector),
 *            neon (other Advanced SIMD data processing), vfp (VFP data
 *            processing and transfers), mem, scalar.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb,
                                                 size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
const char *qemu_plugin_insn_symbol(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

EXPORT int qemu_plugin_version = 1;

enum { TOTAL, SDOT, SMMLA, SMLAL, FMLA, NEON, VFP, SVE, MEM, SCALAR, NCLASS };
static const char *class_names[NCLASS] = {
    "total", "sdot", "smmla", "smlal", "fmla", "neon", "vfp", "sve", "mem", "scalar",
};
static bool is_arm32;
static char *out_path;

/* One translated block: the symbol it starts in, its instructions by class
 * (per_class[TOTAL]: all of them), and how many times it ran. */
struct block {
    const char *sym;
    uint64_t per_class[NCLASS];
    uint64_t execs;
    struct block *next;
};
static struct block *blocks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int class_a64(uint32_t i)
{
    uint32_t op0 = (i >> 25) & 0xf;
    if ((op0 & 0xe) == 0x2 || op0 == 0x0) /* SVE (0010), SME/reserved (0000) */
        return op0 == 0x2 ? SVE : SCALAR;
    if ((op0 & 0x5) == 0x4) /* x1x0: loads and stores */
        return MEM;
    if ((op0 & 0x7) != 0x7) /* data processing, branches: scalar */
        return SCALAR;
    /* x111: SIMD and floating point */
    if ((i & 0x9f20fc00) == 0x0e009400 && ((i >> 22) & 3) == 2) /* [SU]DOT vector */
        return SDOT;
    if ((i & 0xbfe0fc00) == 0x0e809c00) /* USDOT vector */
        return SDOT;
    if ((i & 0x9f00f400) == 0x0f00e000 && ((i >> 22) & 3) == 2) /* [SU]DOT element */
        return SDOT;
    if ((i & 0xbf80f400) == 0x0f00f000) /* SUDOT/USDOT element */
        return SDOT;
    if ((i & 0x9fe0f400) == 0x0e80a400) /* [SU]MMLA, USMMLA */
        return SMMLA;
    if ((i & 0x9f200c00) == 0x0e200000) { /* three different: [SU]MLAL/MLSL/MULL */
        uint32_t opc = (i >> 12) & 0xf;
        if (opc == 0x8 || opc == 0xa || opc == 0xc)
            return SMLAL;
    }
    if ((i & 0x9f000400) == 0x0f000000) { /* by element: [SU]MLAL/MLSL/MULL */
        uint32_t opc = (i >> 12) & 0xf;
        if (opc == 0x2 || opc == 0x6 || opc == 0xa)
            return SMLAL;
    }
    if ((i & 0x9f3ffc00) == 0x0e206800) /* [SU]ADALP */
        return SMLAL;
    if ((i & 0xbf20dc00) == 0x0e20cc00) /* FMLA/FMLS vector (single, double) */
        return FMLA;
    if ((i & 0xbf80b400) == 0x0f801000) /* FMLA/FMLS by element */
        return FMLA;
    if ((i & 0xff000000) == 0x1f000000) /* FMADD family (scalar) */
        return FMLA;
    return NEON;
}

static int class_t32(const uint8_t *d, size_t size)
{
    uint32_t hw1 = d[0] | (uint32_t)d[1] << 8;
    if (size == 2) {
        uint32_t top = hw1 >> 11;
        if ((hw1 >> 12) == 0x5 || (hw1 >> 13) == 0x3 || (hw1 >> 12) == 0x8 ||
            (hw1 >> 12) == 0x9 || top == 0x09 || (hw1 >> 12) == 0xc ||
            (hw1 & 0xf600) == 0xb400)
            return MEM;
        return SCALAR;
    }
    uint32_t hw2 = d[2] | (uint32_t)d[3] << 8;
    if ((hw1 & 0xef00) == 0xef00) { /* Advanced SIMD data processing */
        uint32_t size_bits = (hw1 >> 4) & 3;
        if ((hw1 & 0xef80) == 0xef80 && size_bits != 3 && (hw2 & 0x0050) == 0) {
            uint32_t opc = (hw2 >> 8) & 0xf;
            if (opc == 0x8 || opc == 0xa || opc == 0xc)
                return SMLAL; /* VMLAL, VMLSL, VMULL */
        }
        if ((hw1 & 0xffb3) == 0xffb0 && (hw2 & 0x0f00) == 0x0600)
            return SMLAL; /* VPADAL */
        if ((hw1 & 0xef80) == 0xef00 && ((hw2 & 0x0f10) == 0x0d10 || (hw2 & 0x0f10) == 0x0c10))
            return FMLA; /* VMLA/VMLS.F32, VFMA/VFMS */
        return NEON;
    }
    if ((hw1 & 0xff10) == 0xf900) /* Advanced SIMD element/structure load/store */
        return MEM;
    if ((hw2 & 0x0e00) == 0x0a00 && (hw1 & 0xee00) == 0xec00) /* VLDR/VSTR/VLDM/VSTM */
        return MEM;
    if ((hw2 & 0x0e00) == 0x0a00 && (hw1 & 0xef00) == 0xee00) /* VFP */
        return VFP;
    if ((hw1 & 0xfe00) == 0xf800 || (hw1 & 0xfe00) == 0xe800) /* single, multiple, dual */
        return MEM;
    return SCALAR;
}

static void on_exec(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    __atomic_fetch_add(&((struct block *)udata)->execs, 1, __ATOMIC_RELAXED);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint64_t per_class[NCLASS] = {0};
    const char *sym = NULL;
    for (size_t k = 0; k < n; k++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, k);
        const uint8_t *d = qemu_plugin_insn_data(insn);
        size_t size = qemu_plugin_insn_size(insn);
        int c;
        if (is_arm32) {
            c = class_t32(d, size);
        } else {
            uint32_t w = d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
            c = class_a64(w);
        }
        per_class[c]++;
        if (k == 0)
            sym = qemu_plugin_insn_symbol(insn);
    }
    per_class[TOTAL] = n;
    struct block *b = calloc(1, sizeof *b);
    if (!b) {
        fprintf(stderr, "icount: out of memory\n");
        abort();
    }
    b->sym = sym;
    memcpy(b->per_class, per_class, sizeof per_class);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, b);
    pthread_mutex_lock(&lock);
    b->next = blocks;
    blocks = b;
    pthread_mutex_unlock(&lock);
}

/* Per-symbol totals: a small open-addressing table keyed by the symbol
 * string (qemu hands out one pointer per symbol, but compare the text). */
struct entry { const char *sym; uint64_t count; };

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static void on_exit_cb(qemu_plugin_id_t id, void *p)
{
    (void)id; (void)p;
    size_t cap = 1 << 16, used = 0;
    uint64_t counts[NCLASS] = {0};
    for (struct block *b = blocks; b; b = b->next)
        for (int c = 0; c < NCLASS; c++)
            counts[c] += b->per_class[c] * b->execs;
    struct entry *table = calloc(cap, sizeof *table);
    for (struct block *b = blocks; b && table; b = b->next) {
        const char *sym = b->sym ? b->sym : "?";
        uint64_t add = b->per_class[TOTAL] * b->execs;
        if (!add)
            continue;
        size_t k = hash_str(sym) & (cap - 1);
        while (table[k].sym && strcmp(table[k].sym, sym) != 0)
            k = (k + 1) & (cap - 1);
        if (!table[k].sym) {
            if (used + 1 >= cap / 2)
                break; /* more symbols than the table holds: stop adding */
            table[k].sym = sym;
            used++;
        }
        table[k].count += add;
    }
    FILE *f = out_path ? fopen(out_path, "w") : NULL;
    char line[512];
    for (int c = 0; c < NCLASS; c++) {
        snprintf(line, sizeof line, "class %s %" PRIu64 "\n", class_names[c], counts[c]);
        if (f) fputs(line, f); else qemu_plugin_outs(line);
    }
    for (size_t k = 0; table && k < cap; k++) {
        if (!table[k].sym)
            continue;
        snprintf(line, sizeof line, "sym %" PRIu64 " %s\n", table[k].count, table[k].sym);
        if (f) fputs(line, f); else qemu_plugin_outs(line);
    }
    if (f)
        fclose(f);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                               int argc, char **argv)
{
    is_arm32 = strcmp(info->target_name, "arm") == 0;
    for (int k = 0; k < argc; k++) {
        if (strncmp(argv[k], "out=", 4) == 0) {
            out_path = strdup(argv[k] + 4);
        } else {
            fprintf(stderr, "icount: unknown argument %s (takes out=FILE)\n", argv[k]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit_cb, NULL);
    return 0;
}
