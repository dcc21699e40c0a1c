/* bcryptprimitives.dll for Wine releases that have none (before 8.13, e.g. Debian
 * 12's Wine 8.0). Rust's standard library takes its random numbers from this DLL's
 * ProcessPrng on Windows 10 and later; here it comes from RtlGenRandom, which every
 * Wine has. Only scripts/wine/run puts it in the Wine prefix it runs tests in: it is
 * never shipped with relayup. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom */

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
