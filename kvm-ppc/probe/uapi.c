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
    S(kvm_dirty_log); S(kvm_irq_level); S(kvm_irqfd); S(kvm_ioeventfd); S(kvm_device_attr);
    O(kvm_run, exit_reason); O(kvm_run, mmio.data); O(kvm_run, mmio.len);
    O(kvm_run, mmio.is_write);
    O(kvm_regs, gpr); O(kvm_sregs, u); O(kvm_ppc_smmu_info, sps);
    O(kvm_run, papr_hcall);
    printf("sizeof kvm_run.papr_hcall %zu\n", sizeof(run.papr_hcall));
    N(KVM_CAP_PPC_GET_PVINFO); N(KVM_CAP_PPC_PAPR); N(KVM_CAP_PPC_SMT); N(KVM_CAP_PPC_ENABLE_HCALL); N(KVM_CAP_PPC_ALLOC_HTAB);
    N(KVM_CAP_PPC_GET_SMMU_INFO); N(KVM_CAP_PPC_HTAB_FD); N(KVM_CAP_IRQ_XICS);
    N(KVM_CAP_PPC_HTM); N(KVM_CAP_PPC_MMU_RADIX); N(KVM_CAP_PPC_AIL_MODE_3); N(KVM_CAP_PPC_MMU_HASH_V3);
    N(KVM_EXIT_PAPR_HCALL); N(KVM_DEV_TYPE_XICS);
    N(KVM_EXIT_MMIO); N(KVM_EXIT_SHUTDOWN); N(KVM_EXIT_FAIL_ENTRY); N(KVM_EXIT_INTR);
    N(KVM_EXIT_INTERNAL_ERROR); N(KVM_EXIT_SYSTEM_EVENT);
    printf("KVM_INTERRUPT_SET %u\n", (unsigned)KVM_INTERRUPT_SET);
    printf("KVM_INTERRUPT_UNSET %u\n", (unsigned)KVM_INTERRUPT_UNSET);
    printf("KVM_INTERRUPT_SET_LEVEL %u\n", (unsigned)KVM_INTERRUPT_SET_LEVEL);
    N(KVM_MEM_LOG_DIRTY_PAGES); N(KVM_IOEVENTFD_FLAG_DATAMATCH);
    N(KVM_DEV_XICS_GRP_SOURCES); N(KVM_DEV_XICS_GRP_CTRL); N(KVM_DEV_XICS_NR_SERVERS);
    N(KVM_XICS_LEVEL_SENSITIVE); N(KVM_XICS_MASKED); N(KVM_XICS_PENDING);
    N(KVM_XICS_PRESENTED); N(KVM_XICS_QUEUED);
    N(KVM_REG_PPC_ICP_CPPR_SHIFT); N(KVM_REG_PPC_ICP_XISR_SHIFT);
    N(KVM_REG_PPC_ICP_MFRR_SHIFT); N(KVM_REG_PPC_ICP_PPRI_SHIFT);
    N(KVM_REG_PPC_FPSCR); N(KVM_REG_PPC_VSCR); N(KVM_REG_PPC_ICP_STATE);
    N(KVM_REG_PPC_ONLINE);
    N(KVM_REG_PPC_VSR(31)); N(KVM_REG_PPC_VR(31));
    N(KVM_PPC_PAGE_SIZES_REAL); N(KVM_PPC_1T_SEGMENTS); N(KVM_PPC_NO_HASH);
    N(KVM_GET_HTAB_BOLTED_ONLY); N(KVM_GET_HTAB_WRITE);
    N(KVM_REG_PPC_HIOR); N(KVM_REG_PPC_DAR); N(KVM_REG_PPC_DSISR); N(KVM_REG_PPC_AMR);
    N(KVM_REG_PPC_TB_OFFSET); N(KVM_REG_PPC_VTB); N(KVM_REG_PPC_LPCR_64);
    N(KVM_REG_PPC_ARCH_COMPAT); N(KVM_REG_PPC_DEC_EXPIRY); N(KVM_REG_PPC_PTCR);
    N(KVM_GET_API_VERSION); N(KVM_CREATE_VM); N(KVM_CHECK_EXTENSION);
    N(KVM_GET_VCPU_MMAP_SIZE); N(KVM_CREATE_VCPU); N(KVM_SET_USER_MEMORY_REGION);
    N(KVM_GET_DIRTY_LOG); N(KVM_IRQ_LINE); N(KVM_IRQFD); N(KVM_IOEVENTFD);
    N(KVM_SET_DEVICE_ATTR); N(KVM_GET_DEVICE_ATTR);
    N(KVM_RUN); N(KVM_GET_REGS); N(KVM_SET_REGS); N(KVM_GET_SREGS); N(KVM_SET_SREGS);
    N(KVM_ENABLE_CAP); N(KVM_PPC_GET_SMMU_INFO); N(KVM_PPC_ALLOCATE_HTAB);
    N(KVM_PPC_GET_HTAB_FD); N(KVM_GET_ONE_REG); N(KVM_SET_ONE_REG);
    N(KVM_PPC_CONFIGURE_V3_MMU); N(KVM_CREATE_DEVICE);
    return 0;
}
