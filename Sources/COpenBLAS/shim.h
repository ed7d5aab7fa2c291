#include <cblas.h>
// Declared by OpenBLAS but not by every cblas.h.
int openblas_get_num_threads(void);
void openblas_set_num_threads(int);
char *openblas_get_corename(void);
