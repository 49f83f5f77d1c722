// Stub of Apple's <Foundation/Foundation.h> for the syntax-only compile of
// src/metal/metal_backend.mm on Linux (tests/metal/macsim). Declares only
// what the host uses, with the signatures of Apple's SDK headers. Test-only.
#pragma once

#include <stddef.h>
#include <stdint.h>

typedef unsigned long NSUInteger;
typedef long NSInteger;
typedef signed char BOOL;
#define nil nullptr  // as Apple's <objc/objc.h> defines it in C++
#define YES ((BOOL)1)
#define NO ((BOOL)0)

#define NS_ENUM(type, name) enum name : type name; enum name : type
#define NS_OPTIONS(type, name) enum name : type name; enum name : type
#define NS_RETURNS_RETAINED __attribute__((ns_returns_retained))
#define NS_RETURNS_INNER_POINTER __attribute__((objc_returns_inner_pointer))

// Availability, spelled as in Apple's <os/availability.h>. On a macOS target
// clang checks these against the deployment target; on Linux it ignores
// them, so check_availability.py reads them from these headers instead.
#define FSDPA_STUB_AVAIL_macos(...) __attribute__((availability(macos, introduced = __VA_ARGS__)))
#define FSDPA_STUB_AVAIL_ios(...)
#define API_AVAILABLE(...) FSDPA_STUB_AVAIL_EXPAND(__VA_ARGS__)
#define FSDPA_STUB_AVAIL_EXPAND(first, ...) FSDPA_STUB_AVAIL_##first
#define FSDPA_STUB_DEPR_macos(a, b) __attribute__((availability(macos, introduced = a, deprecated = b)))
#define API_DEPRECATED(msg, first, ...) FSDPA_STUB_DEPR_##first

@protocol NSObject
@end

__attribute__((objc_root_class))
@interface NSObject <NSObject>
+ (instancetype)new;
+ (instancetype)alloc;
- (instancetype)init;
@end

@interface NSString : NSObject
+ (nullable instancetype)stringWithUTF8String:(const char* _Nonnull)nullTerminatedCString;
@property(nullable, readonly) const char* UTF8String NS_RETURNS_INNER_POINTER;
@end

@interface NSError : NSObject
@property(readonly, copy) NSString* _Nonnull localizedDescription;
@end
