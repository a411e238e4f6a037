/* Inside the container: load the driver that `apptainer exec --nv` bound in, and name each GPU through it. */
#include <dlfcn.h>
#include <stdio.h>
typedef int (*init_t)(unsigned);
typedef int (*count_t)(int *);
typedef int (*get_t)(int *, int);
typedef int (*name_t)(char *, int, int);
typedef int (*mem_t)(size_t *, int);
typedef int (*ver_t)(int *);
int main(void) {
  void *h = dlopen("libcuda.so.1", RTLD_NOW);
  if (!h) { fprintf(stderr, "libcuda.so.1 not found in the container: %s\n", dlerror()); return 2; }
  init_t cuInit = (init_t)dlsym(h, "cuInit");
  count_t cuDeviceGetCount = (count_t)dlsym(h, "cuDeviceGetCount");
  get_t cuDeviceGet = (get_t)dlsym(h, "cuDeviceGet");
  name_t cuDeviceGetName = (name_t)dlsym(h, "cuDeviceGetName");
  mem_t cuDeviceTotalMem = (mem_t)dlsym(h, "cuDeviceTotalMem_v2");
  ver_t cuDriverGetVersion = (ver_t)dlsym(h, "cuDriverGetVersion");
  int rc = cuInit(0), n = 0, v = 0;
  if (rc) { fprintf(stderr, "cuInit failed: %d\n", rc); return 3; }
  cuDriverGetVersion(&v); cuDeviceGetCount(&n);
  printf("cuda_driver_version=%d devices=%d\n", v, n);
  for (int i = 0; i < n; i++) {
    int d; char name[256]; size_t mem = 0;
    cuDeviceGet(&d, i); cuDeviceGetName(name, sizeof name, d); cuDeviceTotalMem(&mem, d);
    printf("device %d: %s, %zu MiB\n", i, name, mem >> 20);
  }
  return n > 0 ? 0 : 4;
}
