/* LD_PRELOAD shim for benches/census/census.sh: tracks every live allocation
   (pointer -> requested size) and, on SIGUSR2, writes a histogram of them
   by size to $HIST_DIR/h.PID.N ("big": bytes in allocations of 64 KiB or more). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>
static void *(*r_malloc)(size_t), (*r_free)(void*), *(*r_calloc)(size_t,size_t), *(*r_realloc)(void*,size_t);
static int (*r_pm)(void**,size_t,size_t);
static void *(*r_aa)(size_t,size_t);
static char boot[65536]; static size_t bootp;
#define TBL (1<<23)
static uintptr_t *keys; static uint32_t *sizes;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int ready, dumps;
static void init(void){
  if(r_malloc) return;
  r_malloc=dlsym(RTLD_NEXT,"malloc"); r_free=dlsym(RTLD_NEXT,"free"); r_calloc=dlsym(RTLD_NEXT,"calloc");
  r_realloc=dlsym(RTLD_NEXT,"realloc"); r_pm=dlsym(RTLD_NEXT,"posix_memalign"); r_aa=dlsym(RTLD_NEXT,"aligned_alloc");
}
static void put(void*p,size_t n){ if(!ready||!p) return; uintptr_t k=(uintptr_t)p; size_t h=(k>>4)*0x9E3779B97F4A7C15ULL>>41;
  pthread_mutex_lock(&mu); for(;;h=(h+1)&(TBL-1)){ if(keys[h]==0||keys[h]==1){keys[h]=k;sizes[h]=n;break;} } pthread_mutex_unlock(&mu);}
static void del(void*p){ if(!ready||!p) return; uintptr_t k=(uintptr_t)p; size_t h=(k>>4)*0x9E3779B97F4A7C15ULL>>41;
  pthread_mutex_lock(&mu); for(;;h=(h+1)&(TBL-1)){ if(keys[h]==0) break; if(keys[h]==k){keys[h]=1;break;} } pthread_mutex_unlock(&mu);}
static void dump(int sig){ (void)sig; char name[128]; const char*dir=getenv("HIST_DIR"); snprintf(name,sizeof name,"%s/h.%d.%d",dir?dir:"/tmp",getpid(),dumps++);
  static uint64_t cnt[65536]; memset(cnt,0,sizeof cnt); uint64_t big=0;
  pthread_mutex_lock(&mu); for(size_t i=0;i<TBL;i++) if(keys[i]>1){ if(sizes[i]<65536) cnt[sizes[i]]++; else big+=sizes[i]; } pthread_mutex_unlock(&mu);
  FILE*f=fopen(name,"w"); if(!f) return; for(int i=0;i<65536;i++) if(cnt[i]) fprintf(f,"%d %lu\n",i,cnt[i]); fprintf(f,"big %lu\n",big); fclose(f);}
__attribute__((constructor)) static void ctor(void){ init(); keys=r_calloc(TBL,sizeof *keys); sizes=r_calloc(TBL,sizeof *sizes); signal(SIGUSR2,dump); ready=1; }
void*malloc(size_t n){ if(!r_malloc){ if(bootp+n>sizeof boot) return 0; void*p=boot+bootp; bootp+=(n+15)&~15; return p;} void*p=r_malloc(n); put(p,n); return p;}
void*calloc(size_t a,size_t b){ if(!r_calloc){ void*p=malloc(a*b); memset(p,0,a*b); return p;} void*p=r_calloc(a,b); put(p,a*b); return p;}
void free(void*p){ if((char*)p>=boot&&(char*)p<boot+sizeof boot) return; del(p); r_free(p);}
void*realloc(void*p,size_t n){ if((char*)p>=boot&&(char*)p<boot+sizeof boot){ void*q=malloc(n); memcpy(q,p,n); return q;} del(p); void*q=r_realloc(p,n); put(q,n); return q;}
int posix_memalign(void**pp,size_t a,size_t n){ int r=r_pm(pp,a,n); if(!r) put(*pp,n); return r;}
void*aligned_alloc(size_t a,size_t n){ void*p=r_aa(a,n); put(p,n); return p;}
