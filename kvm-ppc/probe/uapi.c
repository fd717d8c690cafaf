/* What the ppc64el kernel headers say of the structures and numbers the
 * KVM-PPC backend uses (kvm-ppc/src/uapi.rs facts()): built with the
 * cross compiler and run under qemu-user by scripts/ppc64le.sh, its
 * output compared by uapi::tests::layouts_and_numbers_are_the_kernels. */
#include <stdio.h>
#include <stddef.h>
#include <linux/kvm.h>

#define N(x) printf("%s %llu\n", #x, (unsigned long long)(x))
#define S(t) printf("sizeof %s %zu\n", #t, sizeof(struct t))
#define O(t, f) printf("offsetof %s.%s %zu\n", #t, #f, offsetof(struct t, f))

int main(void)
{
    struct kvm_run run;
    S(kvm_regs); S(kvm_sregs); S(kvm_one_reg); S(kvm_enable_cap);
    S(kvm_ppc_smmu_info); S(kvm_get_htab_fd); S(kvm_get_htab_header);
    S(kvm_ppc_mmuv3_cfg); S(kvm_create_device); S(kvm_userspace_memory_region);
    O(kvm_regs, gpr); O(kvm_sregs, u); O(kvm_ppc_smmu_info, sps);
    O(kvm_run, papr_hcall);
    printf("sizeof kvm_run.papr_hcall %zu\n", sizeof(run.papr_hcall));
    N(KVM_CAP_PPC_GET_PVINFO); N(KVM_CAP_PPC_PAPR); N(KVM_CAP_PPC_ALLOC_HTAB);
    N(KVM_CAP_PPC_GET_SMMU_INFO); N(KVM_CAP_PPC_HTAB_FD); N(KVM_CAP_IRQ_XICS);
    N(KVM_CAP_PPC_HTM); N(KVM_CAP_PPC_MMU_RADIX); N(KVM_CAP_PPC_MMU_HASH_V3);
    N(KVM_EXIT_PAPR_HCALL); N(KVM_DEV_TYPE_XICS);
    N(KVM_PPC_PAGE_SIZES_REAL); N(KVM_PPC_1T_SEGMENTS); N(KVM_PPC_NO_HASH);
    N(KVM_GET_HTAB_BOLTED_ONLY); N(KVM_GET_HTAB_WRITE);
    N(KVM_REG_PPC_HIOR); N(KVM_REG_PPC_DAR); N(KVM_REG_PPC_DSISR); N(KVM_REG_PPC_AMR);
    N(KVM_REG_PPC_TB_OFFSET); N(KVM_REG_PPC_VTB); N(KVM_REG_PPC_LPCR_64);
    N(KVM_REG_PPC_ARCH_COMPAT); N(KVM_REG_PPC_DEC_EXPIRY); N(KVM_REG_PPC_PTCR);
    N(KVM_GET_API_VERSION); N(KVM_CREATE_VM); N(KVM_CHECK_EXTENSION);
    N(KVM_GET_VCPU_MMAP_SIZE); N(KVM_CREATE_VCPU); N(KVM_SET_USER_MEMORY_REGION);
    N(KVM_RUN); N(KVM_GET_REGS); N(KVM_SET_REGS); N(KVM_GET_SREGS); N(KVM_SET_SREGS);
    N(KVM_ENABLE_CAP); N(KVM_PPC_GET_SMMU_INFO); N(KVM_PPC_ALLOCATE_HTAB);
    N(KVM_PPC_GET_HTAB_FD); N(KVM_GET_ONE_REG); N(KVM_SET_ONE_REG);
    N(KVM_PPC_CONFIGURE_V3_MMU); N(KVM_CREATE_DEVICE);
    return 0;
}
